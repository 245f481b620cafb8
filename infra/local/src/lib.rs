//! Local runner: serves the exchange handler (the same `BrokerApi::handle` the Lambda binary
//! runs) and a demo OIDC issuer on loopback only.

pub mod stream;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::Body;
use nhi_broker::BrokerError;
use nhi_broker::aws::dynamo::registry_writes::{Expect, RegistryWrite, WriteRefused};
use nhi_broker::aws::dynamo::{DynamoLedger, DynamoRegistry, keys};
use nhi_broker::domain::{
    Alphabet, Destination, DestinationKind, Grant, GrantStatus, INTROSPECTION_TARGET, Issuer, JwksSource,
    RotationPolicy, Secret, SecretGenerator, Target, TargetKind, secret_encryption_context,
};
use nhi_broker::http::{BrokerApi, MAX_BODY_BYTES, error_response};
use nhi_broker::ports::SecretEncryptor;
use nhi_broker::redact::SecretString;
use nhi_broker::testing::demo_issuer::DemoIssuer;
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
pub const DEMO_SECRET: &str = "demo-db-password";
/// A role in moto's default account; moto's STS hands out sessions without the role existing.
pub const DEMO_ROLE: &str = "arn:aws:iam::123456789012:role/nhi-broker/demo-deployer";
/// A made-up value, stored encrypted like any other; never printed by the broker.
pub const DEMO_SECRET_VALUE: &str = "correct-horse-battery-staple";
/// The demo secret rotates this often (when rotate runs; see `--schedule-every`).
pub const DEMO_ROTATION_INTERVAL: i64 = 300;
/// A second demo workload, allowed to call introspection.
pub const DEMO_GATEWAY: &str = "repo:example-org/demo-gateway:ref:refs/heads/main";
pub const DEMO_GATEWAY_GRANT: &str = "demo-gateway-introspects";
/// A webhook destination holding a copy of the demo secret (served by the demo issuer at /events).
pub const DEMO_DESTINATION: &str = "demo-webhook";

/// Bind on 127.0.0.1 only: the local stack never listens on other interfaces.
pub async fn bind_loopback(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await
}

pub type HttpResponse = hyper::Response<Full<Bytes>>;

/// Serve connections from `listener` with `handler` until `shutdown` resolves.
pub async fn serve<H, F>(listener: TcpListener, handler: H, mut shutdown: watch::Receiver<bool>)
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
        Err(_) => {
            let refused = BrokerError::BadRequest(nhi_broker::error::RequestRejection::TooLarge);
            return to_hyper(error_response(&refused, &uuid::Uuid::now_v7().to_string()));
        }
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

pub fn text(status: u16, content_type: &'static str, body: String) -> HttpResponse {
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
        "/jwks.json" => {
            issuer.jwks_served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            text(200, "application/json", issuer.jwks_json().to_string())
        }
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
        // The demo destination: SETs from revoke-fanout (RFC 8935 push), acknowledged with 202.
        "/events" if request.method() == hyper::Method::POST => {
            let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return text(413, "application/json", r#"{"err":"invalid_request"}"#.into()),
            };
            let token = String::from_utf8_lossy(&body);
            let claims = token
                .split('.')
                .nth(1)
                .and_then(|p| base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).ok())
                .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
            match claims {
                Some(claims) => {
                    println!(
                        "demo destination: SET jti={} txn={} sub_id={} events={} (verify it with the broker JWKS)",
                        claims["jti"], claims["txn"], claims["sub_id"]["id"], claims["events"]
                    );
                    text(202, "application/json", String::new())
                }
                None => text(400, "application/json", r#"{"err":"invalid_request"}"#.into()),
            }
        }
        _ => text(404, "text/plain", "not found".into()),
    }
}

pub async fn serve_demo_issuer(issuer: Arc<DemoIssuer>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    serve(listener, move |req| issuer_route(issuer.clone(), req), shutdown).await
}

/// Register the demo issuer (JWKS served on loopback), a JWT target, an AWS role target, a
/// secret with a value and a rotation policy, a destination holding it, a grant for the demo
/// workload on all three, and a grant letting a demo gateway call introspection, so a newcomer
/// can try every endpoint right away.
///
/// Idempotent and safe to re-run against the same tables (a restart, even one that interrupted a
/// rotation): it creates what is missing and never rewrites what exists, in one audited
/// transaction conditional on each created item still being absent. Returns what it created.
pub async fn bootstrap_demo(
    registry: &DynamoRegistry,
    ledger: &DynamoLedger,
    registry_table: &str,
    encryptor: &dyn SecretEncryptor,
    issuer: &DemoIssuer,
    jwks_url: &str,
    now: i64,
) -> nhi_broker::Result<Vec<String>> {
    let mut write = RegistryWrite::new(registry_table);
    let absent = |item: Option<_>| item.is_none();
    let demo_issuer = Issuer {
        issuer: issuer.issuer.clone(),
        name: "demo-issuer".into(),
        audiences: vec![DEMO_AUDIENCE.into()],
        jwks: JwksSource::Url { url: jwks_url.into() },
        algorithms: vec!["ES256".into()],
        enabled: true,
        one_time_jti: false,
        pattern_prefix_segments: 1,
    };
    if absent(
        registry
            .get(&keys::issuer_pk(&demo_issuer.issuer), keys::ISSUER_SK)
            .await?,
    ) {
        write.issuer(&demo_issuer, Expect::Absent)?;
    }
    for (id, kind) in [(DEMO_TARGET, TargetKind::Jwt), (DEMO_ROLE, TargetKind::AwsRole)] {
        if absent(registry.get(&keys::target_pk(id), keys::TARGET_SK).await?) {
            let target = Target {
                id: id.into(),
                kind,
                environment: "dev".into(),
                owner: "platform-team".into(),
                enabled: true,
            };
            write.target(&target, Expect::Absent)?;
        }
    }
    if absent(registry.get(&keys::secret_pk(DEMO_SECRET), keys::SECRET_SK).await?) {
        // Rotated by the local rotate schedule: due every DEMO_ROTATION_INTERVAL seconds.
        let secret = Secret {
            id: DEMO_SECRET.into(),
            owner: "platform-team".into(),
            environment: "dev".into(),
            enabled: true,
            description: "demo database password".into(),
            rotation: Some(RotationPolicy {
                interval_seconds: DEMO_ROTATION_INTERVAL,
                grace_seconds: 120,
                generator: SecretGenerator::Random {
                    length: 32,
                    alphabet: Alphabet::Alphanumeric,
                },
            }),
        };
        let version = format!("v{now}");
        let context = secret_encryption_context(&secret.id, &version, &secret.environment);
        let ciphertext = encryptor
            .encrypt(&SecretString::new(DEMO_SECRET_VALUE.into()), &context)
            .await?;
        write.create_secret(&secret, &version, ciphertext, now)?;
    }
    // A destination holding a copy of the demo secret: the demo issuer's /events prints what it gets.
    if absent(
        registry
            .get(&keys::destination_pk(DEMO_DESTINATION), keys::DESTINATION_SK)
            .await?,
    ) {
        let destination = Destination {
            id: DEMO_DESTINATION.into(),
            kind: DestinationKind::Webhook {
                url: format!("{}/events", issuer.issuer),
            },
            secrets: vec![DEMO_SECRET.into()],
            owner: "platform-team".into(),
            enabled: true,
        };
        write.destination(&destination, &[], Expect::Absent)?;
    }
    let grant = |id: &str, subject: &str, targets: Vec<String>, scopes: Vec<String>| Grant {
        id: id.into(),
        issuers: vec![issuer.issuer.clone()],
        subject: nhi_broker::domain::SubjectMatch::Exact(subject.into()),
        claims: Default::default(),
        condition: None,
        environment: "dev".into(),
        targets,
        scopes,
        max_ttl_seconds: 900,
        session_policy: None,
        approval_expires_at: now + 30 * 24 * 3600,
        owner: "platform-team".into(),
        justification: "local demo".into(),
        status: GrantStatus::Active,
        created_at: now,
        delivers_to: None,
    };
    let grants = [
        grant(
            DEMO_GRANT,
            DEMO_SUBJECT,
            vec![DEMO_TARGET.into(), DEMO_SECRET.into(), DEMO_ROLE.into()],
            vec!["read".into(), "deploy".into()],
        ),
        grant(
            DEMO_GATEWAY_GRANT,
            DEMO_GATEWAY,
            vec![INTROSPECTION_TARGET.into()],
            vec![],
        ),
    ];
    for grant in &grants {
        if absent(
            registry
                .get(&keys::issuer_pk(grant.primary_issuer()), &keys::grant_sk(&grant.id))
                .await?,
        ) {
            write.grant(grant, None, Expect::Absent)?;
        }
    }
    let created: Vec<String> = write.labels().into_iter().map(String::from).collect();
    if created.is_empty() {
        return Ok(created);
    }
    let event = nhi_broker::domain::AuditEvent {
        actor_subject: Some("operator:nhi-local".into()),
        target: Some("manifest:demo bootstrap".into()),
        reason: Some(format!("bootstrap: {}", created.join(", "))),
        ..nhi_broker::domain::AuditEvent::new(
            nhi_broker::domain::AuditAction::Register,
            nhi_broker::domain::AuditOutcome::Applied,
            now,
        )
    };
    write.commit(ledger, &event).await.map_err(|refused| match refused {
        WriteRefused::Changed(what) => BrokerError::Config(format!(
            "{what} appeared while bootstrapping (another nhi-local on the same tables?): start again"
        )),
        WriteRefused::Failed(e) => e,
    })?;
    Ok(created)
}

/// Seconds between runs of an EventBridge schedule expression: `rate(N unit)`; `cron(...)` and
/// anything else are not emulated locally.
pub fn schedule_period(expression: &str) -> Option<u64> {
    let inner = expression.trim().strip_prefix("rate(")?.strip_suffix(')')?;
    let (count, unit) = inner.trim().split_once(' ')?;
    let count: u64 = count.parse().ok().filter(|c| *c > 0)?;
    let unit_seconds = match unit.trim() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    Some(count * unit_seconds)
}

#[cfg(test)]
mod tests {
    #[test]
    fn schedule_rates_are_read_and_cron_is_not_emulated() {
        assert_eq!(super::schedule_period("rate(1 hour)"), Some(3600));
        assert_eq!(super::schedule_period("rate(5 minutes)"), Some(300));
        assert_eq!(super::schedule_period("rate(0 minutes)"), None);
        assert_eq!(super::schedule_period("cron(0 12 * * ? *)"), None);
    }
}
