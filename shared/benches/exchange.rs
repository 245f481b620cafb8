//! Per-request CPU of the exchange path with AWS replaced by in-memory fakes: form parsing, ES256
//! subject-token verification, policy, ES256 signing (local key instead of KMS), ledger write.
//! What it leaves out is network: on AWS add one DynamoDB Query, one GetItem, one KMS Sign and one
//! TransactWriteItems round trip (counted by `a_warm_jwt_exchange_makes_exactly_four_aws_calls`).
//!
//! Run: `cargo bench -p nhi-broker --bench exchange` (release profile). Prints µs per request.

use nhi_broker::domain::{Grant, GrantStatus, Target, TargetKind};
use nhi_broker::testing::FakeBroker;
use std::time::Instant;

const NOW: i64 = 1_795_514_400;
const REQUESTS: usize = 2000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = FakeBroker::new(
        "https://idp.bench",
        Grant {
            id: "g".into(),
            issuers: vec!["https://idp.bench".into()],
            subject: nhi_broker::domain::SubjectMatch::Exact("repo:org/app:ref:refs/heads/main".into()),
            claims: Default::default(),
            condition: None,
            environment: "prod".into(),
            targets: vec!["https://api".into()],
            scopes: vec!["deploy".into()],
            max_ttl_seconds: 900,
            session_policy: None,
            approval_expires_at: NOW + 86_400,
            owner: "o".into(),
            justification: "bench".into(),
            status: GrantStatus::Active,
            created_at: NOW,
            delivers_to: None,
        },
        Target {
            id: "https://api".into(),
            kind: TargetKind::Jwt,
            environment: "prod".into(),
            owner: "o".into(),
            enabled: true,
        },
        NOW,
    );
    let (api, issuer) = (&broker.api, &broker.issuer);
    let bodies: Vec<String> = (0..REQUESTS)
        .map(|_| {
            let token = issuer
                .mint(&issuer.workload_claims("repo:org/app:ref:refs/heads/main", "nhi-broker", NOW, 300))
                .unwrap();
            serde_urlencoded::to_string([
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("subject_token", token.expose()),
                ("audience", "https://api"),
            ])
            .unwrap()
        })
        .collect();
    let mut micros = Vec::with_capacity(REQUESTS);
    runtime.block_on(async {
        for body in bodies {
            let request = http::Request::builder()
                .method("POST")
                .uri("/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(lambda_http::Body::Text(body))
                .unwrap();
            let started = Instant::now();
            let response = api.handle(request).await;
            micros.push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(response.status(), 200);
        }
    });
    micros.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    let pct = |p: f64| micros[((micros.len() as f64 - 1.0) * p) as usize];
    println!(
        "exchange (fakes, {REQUESTS} requests): mean {mean:.0} µs, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
