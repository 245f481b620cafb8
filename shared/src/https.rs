//! The process's one outbound HTTP connector: the AWS SDK clients, JWKS fetching, rotation hooks
//! and SET pushes all go through it. One connector means one root-certificate load and parse per
//! process (not one for the SDK and another for a second HTTP client), one connection pool and one
//! TLS stack (rustls with aws-lc). It is built on first use, so a function that makes no call
//! pays nothing at init.
//!
//! `HttpsClient` is the small client the broker's own calls use: no redirects (a configured URL is
//! never followed elsewhere), a deadline over the whole exchange, the response body capped while it
//! is read and zeroized when dropped (hook responses carry secret values).

use aws_smithy_http_client::Connector;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_types::body::SdkBody;
use http_body_util::BodyExt;
use std::sync::OnceLock;
use std::time::Duration;
use zeroize::Zeroizing;

/// Connect timeout of the shared connector. Each caller bounds its whole call on top of it: the
/// SDK with its attempt and operation timeouts, `HttpsClient` with its own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

static CONNECTOR: OnceLock<SharedHttpConnector> = OnceLock::new();

/// The shared connector, built (and the root certificates loaded) on first call.
pub fn connector() -> SharedHttpConnector {
    CONNECTOR
        .get_or_init(|| {
            SharedHttpConnector::new(
                Connector::builder()
                    .connector_settings(
                        HttpConnectorSettings::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .build(),
                    )
                    .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                    .build(),
            )
        })
        .clone()
}

/// The SDK's HTTP client: every SDK client gets the shared connector, whatever its settings
/// (timeouts are enforced by the SDK's orchestrator around each attempt, not by the connector).
pub fn sdk_http_client() -> SharedHttpClient {
    http_client_fn(|_settings, _components| connector())
}

/// Why an outbound call produced no response. Never carries the URL or any body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpsError {
    #[error("timed out")]
    Timeout,
    #[error("unreachable")]
    Unreachable,
    #[error("response too large")]
    TooLarge,
    #[error("invalid request")]
    InvalidRequest,
}

/// A response whose body was read up to the caller's cap (or not at all).
pub struct HttpsResponse {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
}

impl HttpsResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, Clone)]
pub struct HttpsClient {
    /// Deadline over connect, request, response and body.
    timeout: Duration,
}

impl HttpsClient {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// `GET url`; reads at most `max_body` bytes of the body.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)], max_body: usize) -> Result<HttpsResponse, HttpsError> {
        self.send("GET", url, headers, Vec::new(), max_body).await
    }

    /// `POST url` with `body`; reads at most `max_body` bytes of the response (0: none).
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        max_body: usize,
    ) -> Result<HttpsResponse, HttpsError> {
        self.send("POST", url, headers, body, max_body).await
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        max_body: usize,
    ) -> Result<HttpsResponse, HttpsError> {
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(SdkBody::from(body))
            .map_err(|_| HttpsError::InvalidRequest)?;
        let request =
            aws_smithy_runtime_api::http::Request::try_from(request).map_err(|_| HttpsError::InvalidRequest)?;
        let exchange = async {
            let response = connector().call(request).await.map_err(|e| {
                if e.is_timeout() {
                    HttpsError::Timeout
                } else {
                    HttpsError::Unreachable
                }
            })?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut read = Zeroizing::new(Vec::new());
            if max_body > 0 {
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|_| HttpsError::Unreachable)?;
                    if let Ok(chunk) = frame.into_data() {
                        if read.len() + chunk.len() > max_body {
                            return Err(HttpsError::TooLarge);
                        }
                        read.extend_from_slice(&chunk);
                    }
                }
            }
            Ok(HttpsResponse { status, body: read })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpsError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP/1.1 server on loopback answering `response` to the first request.
    async fn serve_once(response: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(response).await;
            let _ = socket.shutdown().await;
        });
        format!("http://{addr}/jwks")
    }

    #[tokio::test]
    async fn reads_a_body_within_its_cap_and_refuses_a_larger_one() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
        let response = HttpsClient::new(Duration::from_secs(5))
            .get(&serve_once(ok).await, &[("accept", "application/json")], 5)
            .await
            .unwrap();
        assert_eq!((response.status, &response.body[..]), (200, &b"hello"[..]));
        let too_large = HttpsClient::new(Duration::from_secs(5))
            .get(&serve_once(ok).await, &[], 4)
            .await;
        assert_eq!(too_large.err(), Some(HttpsError::TooLarge));
    }

    #[tokio::test]
    async fn a_redirect_is_answered_as_is_never_followed() {
        let redirect = b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let response = HttpsClient::new(Duration::from_secs(5))
            .post(&serve_once(redirect).await, &[], b"x".to_vec(), 0)
            .await
            .unwrap();
        assert_eq!(response.status, 302);
        assert!(!response.is_success());
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        // Accepted by the kernel's backlog, never answered.
        let result = HttpsClient::new(Duration::from_millis(200)).get(&url, &[], 10).await;
        assert_eq!(result.err(), Some(HttpsError::Timeout));
        drop(listener);
    }
}
