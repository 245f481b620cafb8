//! The real `nhi` binary against the moto-backed stack: the exchange API served on loopback from
//! the same handler the Lambda runs, a demo issuer for subject tokens, introspection to check
//! what is still active.

#![allow(dead_code)]

use nhi_tests::{Harness, form_request};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

pub struct Stack {
    pub h: Harness,
    pub url: String,
    pub dir: PathBuf,
    pub token_file: PathBuf,
    caller: String,
    stop: watch::Sender<bool>,
}

impl Stack {
    /// A harness (issuer, targets, a grant for its subject), an introspection caller, and the API
    /// on a loopback port. Register further grants before the first exchange (grants are cached).
    pub async fn new() -> Self {
        let h = Harness::new().await;
        let caller = h.introspection_caller().await;
        let sdk = nhi_broker::aws::sdk_config().await;
        let api = Arc::new(nhi_broker::wiring::broker_api(&h.config, &sdk).unwrap());
        let listener = nhi_local::bind_loopback(0).await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(nhi_local::serve_broker(api, listener, stopped));
        let dir = std::env::temp_dir().join(format!("nhi-cli-{}", h.id));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("subject-token");
        let stack = Self {
            h,
            url,
            dir,
            token_file,
            caller,
            stop,
        };
        stack.refresh_subject_token();
        stack
    }

    /// A fresh subject token (300 s) in the file `nhi --subject-token-file` reads.
    pub fn refresh_subject_token(&self) -> String {
        let token = self.h.token(&self.h.claims());
        std::fs::write(&self.token_file, &token).unwrap();
        token
    }

    /// Stop serving the API (the broker becomes unreachable).
    pub fn stop_api(&self) {
        let _ = self.stop.send(true);
    }

    /// `nhi --url .. --subject-token-file ..` with no GitHub variables inherited.
    pub fn nhi(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nhi"));
        command
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
            .env_remove("NHI_URL")
            .args(["--url", &self.url, "--subject-token-file"])
            .arg(&self.token_file)
            .kill_on_drop(true);
        command
    }

    pub async fn introspect(&self, token: &str) -> Value {
        let (status, body) = self
            .h
            .call(form_request("/introspect", &[("token", token)], Some(&self.caller)))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(mut command: tokio::process::Command) -> Run {
    let output = command.output().await.expect("nhi runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A string claim of a JWT (unverified; the tests verify signatures separately).
pub fn claim(token: &str, name: &str) -> String {
    nhi_client::broker::jwt_claim(token, name).unwrap_or_default()
}

/// Verify a broker JWT with the broker's JWKS; its claims.
pub async fn verify_broker_jwt(h: &Harness, token: &str, audience: &str) -> Value {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwks = h.broker_jwks().await;
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("a published key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[&h.config.broker_issuer]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("verifies against the broker JWKS")
        .claims
}

/// A loopback HTTP server answering each request with `respond(method, path+query, headers, body)`.
pub async fn serve_fn<F>(respond: F) -> (String, watch::Sender<bool>)
where
    F: Fn(String, String, http::HeaderMap, String) -> (u16, String) + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    let listener = nhi_local::bind_loopback(0).await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = watch::channel(false);
    let respond = Arc::new(respond);
    tokio::spawn(nhi_local::serve(
        listener,
        move |request: hyper::Request<hyper::body::Incoming>| {
            let respond = respond.clone();
            async move {
                let method = request.method().to_string();
                let path = request.uri().to_string();
                let headers = request.headers().clone();
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let (status, text) = respond(method, path, headers, String::from_utf8_lossy(&body).into_owned());
                let mut response = nhi_local::text(status, "application/json", text);
                if status == 503 {
                    response
                        .headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("1"));
                }
                response
            }
        },
        stopped,
    ));
    (url, stop)
}
