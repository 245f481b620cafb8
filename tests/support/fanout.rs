//! Fanout test support: a loopback webhook receiver, the real fanout and sweep services wired to
//! moto with a movable clock, and the emulated stream event source mapping.

use crate::{Harness, now};
use http_body_util::BodyExt;
use nhi_broker::aws::Clients;
use nhi_broker::fanout::FanoutService;
use nhi_broker::sweeper::SweepService;
use nhi_broker::testing::FixedClock;
use nhi_local::stream::{PollOutcome, StartingPosition, StreamPoller};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Fanout tests read the one revocations stream: they run one at a time, each from the stream's
/// end, so each sees only its own records.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// One POST a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub content_type: String,
    pub body: String,
}

/// A webhook destination on 127.0.0.1 answering every POST with `status`.
pub struct Receiver {
    pub url: String,
    pub status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Received>>>,
    _stop: watch::Sender<bool>,
}

impl Receiver {
    pub async fn start(status: u16) -> Self {
        Self::start_slow(status, std::time::Duration::ZERO).await
    }

    /// A receiver that takes `delay` to answer each request (a slow destination).
    pub async fn start_slow(status: u16, delay: std::time::Duration) -> Self {
        let listener = nhi_local::bind_loopback(0).await.unwrap();
        let url = format!("http://127.0.0.1:{}/events", listener.local_addr().unwrap().port());
        let status = Arc::new(AtomicU16::new(status));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let (answer, log) = (status.clone(), received.clone());
        tokio::spawn(nhi_local::serve(
            listener,
            move |request: hyper::Request<hyper::body::Incoming>| {
                let (answer, log) = (answer.clone(), log.clone());
                async move {
                    let content_type = request
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    log.lock().unwrap().push(Received {
                        content_type,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    tokio::time::sleep(delay).await;
                    nhi_local::text(answer.load(Ordering::SeqCst), "application/json", String::new())
                }
            },
            stopped,
        ));
        Self {
            url,
            status,
            received,
            _stop: stop,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// revoke-fanout as deployed (DynamoDB, KMS signing, EventBridge, IAM against moto), with a
/// clock the test moves, fed by the emulated event source mapping.
pub struct Fanout {
    pub service: FanoutService,
    pub sweeper: SweepService,
    pub clock: Arc<FixedClock>,
    pub clients: Clients,
    pub poller: StreamPoller,
    /// Invocation deadline given to the handler (None: unlimited).
    pub deadline: Option<Instant>,
    /// Every stream event the handler was invoked with, in order.
    pub events: Vec<serde_json::Value>,
}

impl Fanout {
    pub async fn new(h: &Harness) -> Self {
        let sdk = nhi_broker::aws::sdk_config().await;
        let clients = Clients::new(&sdk);
        let clock = Arc::new(FixedClock::at(now()));
        let mut service = nhi_broker::wiring::fanout_service(&h.config, &clients).unwrap();
        service.clock = clock.clone();
        let mut sweeper = nhi_broker::wiring::sweep_service(&h.config, &clients);
        sweeper.clock = clock.clone();
        let poller = StreamPoller::from_env(StartingPosition::Latest).await.unwrap();
        Self {
            service,
            sweeper,
            clock,
            clients,
            poller,
            deadline: None,
            events: Vec::new(),
        }
    }

    pub fn set_clock(&self, at: i64) {
        self.clock.0.store(at, Ordering::SeqCst);
    }

    pub fn now(&self) -> i64 {
        self.clock.0.load(Ordering::SeqCst)
    }

    /// Deliver stream records to the handler until the stream is drained (continuations included).
    pub async fn drain(&mut self) -> PollOutcome {
        let mut total = PollOutcome::default();
        for _ in 0..200 {
            let service = &self.service;
            let deadline = self.deadline;
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            let outcome = self
                .poller
                .poll_once(move |event| {
                    log.lock().unwrap().push(event.clone());
                    async move {
                        nhi_broker::jobs::handle_fanout_event(service, event, deadline)
                            .await
                            .map_err(|e| e.to_string())
                    }
                })
                .await
                .unwrap();
            self.events.extend(seen.lock().unwrap().drain(..));
            total.invocations += outcome.invocations;
            total.records_done += outcome.records_done;
            total.failures_reported += outcome.failures_reported;
            total.dead_lettered.extend(outcome.dead_lettered);
            if outcome.invocations == 0 {
                return total;
            }
        }
        panic!("the stream never drained");
    }
}
