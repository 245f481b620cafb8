//! Per-request CPU of the exchange path with AWS replaced by in-memory fakes: form parsing, ES256
//! subject-token verification, policy, ES256 signing (local key instead of KMS), ledger write.
//! What it leaves out is network: on AWS a warm JWT exchange adds one KMS Sign and one
//! TransactWriteItems round trip (`a_warm_jwt_exchange_makes_exactly_two_aws_calls`).
//!
//! The same exchange is measured with 1, 1,000 and 10,000 grants on the issuer (besides the one
//! that applies: half exact grants for other subjects, half subject patterns with other
//! prefixes), the policy catalog kept as the exchange keeps it between requests. The cost of a
//! request must not grow with the number of grants: the run fails if 10,000 grants cost more
//! than 1.5 x one grant (same run, same machine, interleaved rounds).
//!
//! Run: `cargo bench -p nhi-broker --bench exchange` (release profile). Prints µs per request.

use nhi_broker::domain::{Grant, GrantStatus, SubjectMatch, Target, TargetKind};
use nhi_broker::testing::FakeBroker;
use std::time::{Duration, Instant};

const NOW: i64 = 1_795_514_400;
const REQUESTS: usize = 1000;
const ROUNDS: usize = 3;
const SUBJECT: &str = "repo:org/app:ref:refs/heads/main";

fn grant(id: String, subject: SubjectMatch) -> Grant {
    Grant {
        id,
        issuers: vec!["https://idp.bench".into()],
        subject,
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
    }
}

/// The grant that applies, plus `others` that do not (half exact, half patterns).
fn grants(others: usize) -> Vec<Grant> {
    let mut grants = vec![grant("g".into(), SubjectMatch::Exact(SUBJECT.into()))];
    for i in 0..others {
        let subject = if i % 2 == 0 {
            SubjectMatch::Exact(format!("repo:org-{i}/app:ref:refs/heads/main"))
        } else {
            SubjectMatch::Pattern(format!("repo:org-{i}/*:ref:refs/heads/main"))
        };
        grants.push(grant(format!("g-{i:05}"), subject));
    }
    grants
}

fn broker(others: usize) -> FakeBroker {
    let target = Target {
        id: "https://api".into(),
        kind: TargetKind::Jwt,
        environment: "prod".into(),
        owner: "o".into(),
        enabled: true,
    };
    // Long enough that no refresh falls inside a round (the exchange's default is 5 s).
    FakeBroker::with_grants(
        "https://idp.bench",
        grants(others),
        target,
        NOW,
        Duration::from_secs(600),
    )
}

fn bodies(broker: &FakeBroker) -> Vec<String> {
    (0..REQUESTS)
        .map(|_| {
            let token = broker
                .issuer
                .mint(&broker.issuer.workload_claims(SUBJECT, "nhi-broker", NOW, 300))
                .unwrap();
            serde_urlencoded::to_string([
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("subject_token", token.expose()),
                ("audience", "https://api"),
            ])
            .unwrap()
        })
        .collect()
}

async fn run(broker: &FakeBroker, bodies: Vec<String>, micros: &mut Vec<f64>) {
    for body in bodies {
        let request = http::Request::builder()
            .method("POST")
            .uri("/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(lambda_http::Body::Text(body))
            .unwrap();
        let started = Instant::now();
        let response = broker.api.handle(request).await;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        assert_eq!(response.status(), 200);
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sizes = [0usize, 999, 9_999];
    let brokers: Vec<FakeBroker> = sizes.iter().map(|n| broker(*n)).collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    runtime.block_on(async {
        // The cold load (compiling the issuer's patterns) is not a request's cost: one warm-up each.
        for broker in &brokers {
            let warm_up = bodies(broker).into_iter().take(1).collect();
            run(broker, warm_up, &mut Vec::new()).await;
        }
        for _ in 0..ROUNDS {
            for (broker, samples) in brokers.iter().zip(samples.iter_mut()) {
                run(broker, bodies(broker), samples).await;
            }
        }
    });
    let mut means = Vec::new();
    for (n, micros) in sizes.iter().zip(samples.iter_mut()) {
        micros.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mean = micros.iter().sum::<f64>() / micros.len() as f64;
        let pct = |p: f64| micros[((micros.len() as f64 - 1.0) * p) as usize];
        println!(
            "exchange with {:>6} grants on the issuer (fakes, {} requests): mean {mean:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
            n + 1,
            micros.len(),
            pct(0.5),
            pct(0.99),
        );
        means.push(pct(0.5));
    }
    let ratio = means[2] / means[0];
    println!("10,000 grants / 1 grant (p50): {ratio:.2}x (must stay within 1.5x)");
    if ratio > 1.5 {
        eprintln!("the cost of a request grows with the number of grants");
        std::process::exit(1);
    }
}
