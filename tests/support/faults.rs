//! A fault layer in front of moto: the SDK talks to this loopback proxy, which forwards to moto
//! unless a rule says otherwise. moto answers one request at a time and never times out,
//! throttles, reports a transaction conflict or loses a response; DynamoDB, KMS and STS do all of
//! these, so tests make them happen here:
//! - `Freeze`: never answer (the client's attempt and operation deadlines must fire);
//! - `Error`: answer an AWS JSON error without forwarding (throttling, `TransactionConflict`);
//! - `LoseResponse`: forward (so the write commits in moto), then answer 500 as if the response
//!   were lost on the way back: an ambiguous commit, which the SDK retries.
//!
//! Rules match the `X-Amz-Target` operation suffix (e.g. `TransactWriteItems`, `Sign`) and apply
//! to the next `times` matching requests. Every request is recorded with its operation and, for
//! transactions, its `ClientRequestToken`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub enum Fault {
    Freeze,
    Error { status: u16, body: String },
    LoseResponse,
}

impl Fault {
    /// DynamoDB's answer when a transaction collides with another on one item.
    pub fn transaction_conflict(items: usize, conflicting: usize) -> Self {
        let reasons: Vec<serde_json::Value> = (0..items)
            .map(|i| {
                if i == conflicting {
                    serde_json::json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"})
                } else {
                    serde_json::json!({"Code": "None"})
                }
            })
            .collect();
        Self::Error {
            status: 400,
            body: serde_json::json!({
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
                "CancellationReasons": reasons,
            })
            .to_string(),
        }
    }

    pub fn throttling(code: &str) -> Self {
        Self::Error {
            status: 400,
            body: serde_json::json!({ "__type": code, "message": "Rate exceeded" }).to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    operation: String,
    remaining: u32,
    fault: Fault,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub operation: String,
    pub client_request_token: Option<String>,
    pub faulted: bool,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

pub struct FaultProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    _stop: watch::Sender<bool>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 in front of `AWS_ENDPOINT_URL` (moto).
    pub async fn start() -> Self {
        let upstream = std::env::var("AWS_ENDPOINT_URL").expect("the moto stack (make test)");
        let listener = nhi_local::bind_loopback(0).await.expect("bind");
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state: Arc<Mutex<State>> = Arc::default();
        let (stop, stopped) = watch::channel(false);
        let client = reqwest::Client::new();
        let handler_state = state.clone();
        let handler = move |request: hyper::Request<hyper::body::Incoming>| {
            let state = handler_state.clone();
            let client = client.clone();
            let upstream = upstream.clone();
            async move { relay(state, client, upstream, request).await }
        };
        tokio::spawn(nhi_local::serve(listener, handler, stopped));
        Self {
            url,
            state,
            _stop: stop,
        }
    }

    /// Apply `fault` to the next `times` requests for `operation`.
    pub fn fail(&self, operation: &str, times: u32, fault: Fault) {
        self.state.lock().unwrap().rules.push(Rule {
            operation: operation.into(),
            remaining: times,
            fault,
        });
    }

    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn forget(&self) {
        self.state.lock().unwrap().seen.clear();
    }
}

async fn relay(
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
    upstream: String,
    request: hyper::Request<hyper::body::Incoming>,
) -> nhi_local::HttpResponse {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let operation = target.rsplit('.').next().unwrap_or_default().to_string();
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("ClientRequestToken").and_then(|t| t.as_str()).map(String::from));
    let fault = {
        let mut state = state.lock().unwrap();
        let fault = state
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && (r.operation == operation || (r.operation.is_empty() && !target.is_empty())))
            .map(|r| {
                r.remaining -= 1;
                r.fault.clone()
            });
        state.seen.push(Seen {
            operation: operation.clone(),
            client_request_token: token,
            faulted: fault.is_some(),
        });
        fault
    };
    match fault {
        Some(Fault::Freeze) => {
            // Longer than any deadline under test; the client gives up and drops the connection.
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            respond(500, "{}".into())
        }
        Some(Fault::Error { status, body }) => respond(status, body),
        Some(Fault::LoseResponse) => {
            let _ = forward(&client, &upstream, &parts, body).await;
            respond(
                500,
                serde_json::json!({"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "lost"})
                    .to_string(),
            )
        }
        None => match forward(&client, &upstream, &parts, body).await {
            Some((status, headers, body)) => {
                let mut response = hyper::Response::new(Full::new(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                response
            }
            None => respond(502, "{}".into()),
        },
    }
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    parts: &http::request::Parts,
    body: Bytes,
) -> Option<(http::StatusCode, http::HeaderMap, Bytes)> {
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    let response = request.body(body).send().await.ok()?;
    let status = response.status();
    let mut headers = response.headers().clone();
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::TRANSFER_ENCODING);
    let body = response.bytes().await.ok()?;
    Some((status, headers, body))
}

fn respond(status: u16, body: String) -> nhi_local::HttpResponse {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    response
}

/// Deadlines a loaded moto always meets (moto copies every table a transaction touches, so a late
/// test's calls can take far longer than DynamoDB's): for tests of what faults do, not of how fast
/// deadlines fire.
pub const PATIENT: nhi_broker::config::AwsCallSettings = nhi_broker::config::AwsCallSettings {
    connect_timeout: std::time::Duration::from_secs(1),
    attempt_timeout: std::time::Duration::from_secs(5),
    operation_timeout: std::time::Duration::from_secs(15),
    max_attempts: 3,
};

/// Serve the harness' exchange API through `proxy`, with these AWS deadlines and request deadline.
pub async fn behind(
    h: &mut crate::Harness,
    proxy: &FaultProxy,
    settings: nhi_broker::config::AwsCallSettings,
    deadline: std::time::Duration,
) {
    let sdk = nhi_broker::aws::sdk_config_with(&settings, Some(&proxy.url)).await;
    let mut config = h.config.clone();
    config.request_deadline = deadline;
    h.api = nhi_broker::wiring::broker_api(&config, &sdk).unwrap();
}
