//! `nhi events serve`: an RFC 8935 push receiver that runs a command per verified event.
//!
//! Per request: `POST` with `Content-Type: application/secevent+jwt` → verify ([`crate::set`]) →
//! if its `jti` was already handled, acknowledge (202) without acting → run `sh -c COMMAND` with
//! the event in its environment (`NHI_EVENT_*`) and as JSON on stdin → 202 only when it exits 0;
//! otherwise 503, so the broker delivers it again. A SET that fails verification gets 400 with
//! the RFC 8935 error object; an unreachable JWKS gets 503. Events are handled one at a time, in
//! arrival order, so a slow command never runs twice for one event.

use crate::set::{SecurityEvent, SetError, SetVerifier, VerifiedSet};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub struct Handler {
    pub verifier: SetVerifier,
    pub command: String,
    pub timeout: Duration,
    serial: tokio::sync::Mutex<()>,
}

/// Variables the command gets (besides the event JSON on stdin).
pub fn event_environment(set: &VerifiedSet) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("NHI_EVENT_TYPE", set.event.type_uri().to_string()),
        ("NHI_EVENT_JTI", set.jti.clone()),
        ("NHI_EVENT_TXN", set.txn.clone()),
        ("NHI_EVENT_SUBJECT", set.subject.clone()),
    ];
    match &set.event {
        SecurityEvent::CredentialRevoked {
            target_kind,
            target_id,
            reason,
            ..
        } => {
            env.push(("NHI_EVENT_TARGET_KIND", target_kind.clone()));
            env.push(("NHI_EVENT_TARGET_ID", target_id.clone()));
            env.push(("NHI_EVENT_REASON", reason.clone()));
        }
        SecurityEvent::CredentialRotated {
            secret_id,
            old_version,
            new_version,
            ..
        } => {
            env.push(("NHI_EVENT_SECRET_ID", secret_id.clone()));
            env.push(("NHI_EVENT_OLD_VERSION", old_version.clone().unwrap_or_default()));
            env.push(("NHI_EVENT_NEW_VERSION", new_version.clone()));
        }
    }
    env
}

/// The event as JSON (stdin of the command).
pub fn event_json(set: &VerifiedSet) -> serde_json::Value {
    let mut event = json!({
        "type": set.event.type_uri(), "jti": set.jti, "txn": set.txn, "iat": set.iat, "subject": set.subject,
    });
    let extra = match &set.event {
        SecurityEvent::CredentialRevoked {
            target_kind,
            target_id,
            reason,
            at,
        } => json!({"target_kind": target_kind, "target_id": target_id, "reason": reason, "at": at}),
        SecurityEvent::CredentialRotated {
            secret_id,
            old_version,
            new_version,
            at,
        } => json!({"secret_id": secret_id, "old_version": old_version, "new_version": new_version, "at": at}),
    };
    if let (Some(target), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    event
}

type Response = hyper::Response<Full<Bytes>>;

fn answer(status: u16, body: serde_json::Value) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn accepted() -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::ACCEPTED;
    response
}

impl Handler {
    pub fn new(verifier: SetVerifier, command: &str, timeout: Duration) -> Self {
        Self {
            verifier,
            command: command.into(),
            timeout,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn handle(&self, request: hyper::Request<hyper::body::Incoming>) -> Response {
        if request.method() != hyper::Method::POST {
            return answer(405, json!({"err": "invalid_request", "description": "POST a SET"}));
        }
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("application/secevent+jwt") {
            return answer(
                400,
                json!({"err": "invalid_request", "description": "Content-Type must be application/secevent+jwt"}),
            );
        }
        let body = match Limited::new(request.into_body(), 16 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return answer(400, json!({"err": "invalid_request", "description": "body too large"})),
        };
        let Ok(token) = std::str::from_utf8(&body) else {
            return answer(400, json!({"err": "invalid_request", "description": "not UTF-8"}));
        };
        let _one_at_a_time = self.serial.lock().await;
        let now = crate::now();
        let set = match self.verifier.verify(token.trim(), now).await {
            Ok(set) => set,
            Err(e) => return refuse(&e),
        };
        if self.verifier.seen(&set.jti, now) {
            eprintln!(
                "nhi events: {} jti={} already handled; acknowledged again",
                set.event.type_uri(),
                set.jti
            );
            return accepted();
        }
        match self.run_command(&set).await {
            Ok(()) => {
                self.verifier.handled(&set.jti, crate::now());
                eprintln!("nhi events: {} jti={} handled", set.event.type_uri(), set.jti);
                accepted()
            }
            Err(why) => {
                eprintln!(
                    "nhi events: {} jti={} not acknowledged: {why}",
                    set.event.type_uri(),
                    set.jti
                );
                answer(
                    503,
                    json!({"err": "temporarily_unavailable", "description": "the handler failed; deliver again"}),
                )
            }
        }
    }

    async fn run_command(&self, set: &VerifiedSet) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .envs(event_environment(set))
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run the command: {}", e.kind()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(event_json(set).to_string().as_bytes()).await;
        }
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Err(_) => Err(format!("the command took more than {} s", self.timeout.as_secs())),
            Ok(Err(e)) => Err(format!("the command failed: {}", e.kind())),
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("the command exited with {status}")),
        }
    }
}

fn refuse(e: &SetError) -> Response {
    eprintln!("nhi events: refused a SET: {e}");
    match e.code() {
        Some(code) => answer(400, json!({"err": code, "description": e.to_string()})),
        None => answer(
            503,
            json!({"err": "temporarily_unavailable", "description": e.to_string()}),
        ),
    }
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handler: Arc<Handler>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
