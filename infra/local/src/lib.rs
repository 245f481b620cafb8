//! Local runner: serves the exchange handler (the same `BrokerApi::handle` the Lambda binary
//! runs) and a demo OIDC issuer on loopback only.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::Body;
use nhi_broker::BrokerError;
use nhi_broker::aws::dynamo::DynamoRegistry;
use nhi_broker::demo_issuer::DemoIssuer;
use nhi_broker::domain::{Grant, GrantStatus, Issuer, JwksSource, Target, TargetKind};
use nhi_broker::http_api::{BrokerApi, MAX_BODY_BYTES, error_response};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const DEMO_AUDIENCE: &str = "nhi-broker";
pub const DEMO_SUBJECT: &str = "repo:example-org/demo-app:ref:refs/heads/main";
pub const DEMO_TARGET: &str = "https://api.demo.local";
pub const DEMO_GRANT: &str = "demo-app-deploys";

/// Bind on 127.0.0.1 only: the local stack never listens on other interfaces.
pub async fn bind_loopback(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await
}

type HttpResponse = hyper::Response<Full<Bytes>>;

/// Serve connections from `listener` with `handler` until `shutdown` resolves.
async fn serve<H, F>(listener: TcpListener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let handler = handler.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_shutdown.changed() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

/// Convert an HTTP request into the `lambda_http::Request` API Gateway would deliver, run the
/// broker's handler, and convert back.
async fn broker_route(api: Arc<BrokerApi>, request: hyper::Request<Incoming>) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let bytes = match Limited::new(body, MAX_BODY_BYTES + 1).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return to_hyper(error_response(&BrokerError::PayloadTooLarge)),
    };
    let body = if bytes.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        }
    };
    to_hyper(api.handle(http::Request::from_parts(parts, body)).await)
}

fn to_hyper(response: lambda_http::Response<Body>) -> HttpResponse {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bin) => Bytes::from(bin),
        _ => Bytes::new(),
    };
    hyper::Response::from_parts(parts, Full::new(bytes))
}

pub async fn serve_broker(api: Arc<BrokerApi>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    serve(listener, move |req| broker_route(api.clone(), req), shutdown).await
}

fn text(status: u16, content_type: &'static str, body: String) -> HttpResponse {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// The demo issuer: `GET /jwks.json`, and `GET /token?sub=..&aud=..&ttl=..` which mints a
/// workload token (defaults: the demo subject, the broker's audience, 300 s).
async fn issuer_route(issuer: Arc<DemoIssuer>, request: hyper::Request<Incoming>) -> HttpResponse {
    match request.uri().path() {
        "/jwks.json" => text(200, "application/json", issuer.jwks_json().to_string()),
        "/token" => {
            let query: HashMap<String, String> =
                serde_urlencoded::from_str(request.uri().query().unwrap_or_default()).unwrap_or_default();
            let sub = query.get("sub").map(String::as_str).unwrap_or(DEMO_SUBJECT);
            let aud = query.get("aud").map(String::as_str).unwrap_or(DEMO_AUDIENCE);
            let ttl = query
                .get("ttl")
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(300)
                .clamp(1, 3600);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            match issuer.mint(&issuer.workload_claims(sub, aud, now, ttl)) {
                Ok(token) => text(200, "text/plain", token.expose().to_string()),
                Err(_) => text(500, "text/plain", "mint failed".into()),
            }
        }
        _ => text(404, "text/plain", "not found".into()),
    }
}

pub async fn serve_demo_issuer(issuer: Arc<DemoIssuer>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    serve(listener, move |req| issuer_route(issuer.clone(), req), shutdown).await
}

/// Register the demo issuer (JWKS served on loopback), a target and a grant, so a newcomer can
/// exchange a token right away. Idempotent: re-running overwrites the same records.
pub async fn bootstrap_demo(
    registry: &DynamoRegistry,
    issuer: &DemoIssuer,
    jwks_url: &str,
    now: i64,
) -> nhi_broker::Result<()> {
    registry
        .put_issuer(&Issuer {
            issuer: issuer.issuer.clone(),
            name: "demo-issuer".into(),
            audiences: vec![DEMO_AUDIENCE.into()],
            jwks: JwksSource::Url { url: jwks_url.into() },
            algorithms: vec!["ES256".into()],
            enabled: true,
            one_time_jti: false,
        })
        .await?;
    registry
        .put_target(&Target {
            id: DEMO_TARGET.into(),
            kind: TargetKind::Jwt,
            environment: "dev".into(),
            owner: "platform-team".into(),
            enabled: true,
        })
        .await?;
    registry
        .put_grant(&Grant {
            id: DEMO_GRANT.into(),
            issuer: issuer.issuer.clone(),
            subject: DEMO_SUBJECT.into(),
            claims: Default::default(),
            environment: "dev".into(),
            targets: vec![DEMO_TARGET.into()],
            scopes: vec!["read".into(), "deploy".into()],
            max_ttl_seconds: 900,
            approval_expires_at: now + 30 * 24 * 3600,
            owner: "platform-team".into(),
            justification: "local demo".into(),
            status: GrantStatus::Active,
            created_at: now,
        })
        .await
}
