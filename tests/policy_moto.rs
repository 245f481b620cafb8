//! Policy against moto: subject patterns, several issuers per grant, typed claim and CEL
//! conditions end to end through the exchange API; revocation with pattern and multi-issuer
//! grants; AWS calls and bytes read per request whatever the number of grants.

use nhi_broker::aws::dynamo::registry_writes::{Expect, RegistryWrite};
use nhi_broker::domain::{
    AuditAction, AuditEvent, AuditOutcome, ClaimCondition, Grant, Issuer, RevocationTarget, SubjectMatch,
};
use nhi_broker::testing::demo_issuer::DemoIssuer;
use nhi_tests::{AUDIENCE, Harness, now};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;

/// Another issuer on loopback, registered, for as long as the returned guard lives.
async fn second_issuer(h: &Harness, name: &str) -> (Arc<DemoIssuer>, watch::Sender<bool>) {
    let listener = nhi_local::bind_loopback(0).await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let issuer = Arc::new(DemoIssuer::generate(&url).unwrap());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(nhi_local::serve_demo_issuer(issuer.clone(), listener, stopped));
    h.registry
        .put_issuer(&Issuer {
            issuer: url.clone(),
            name: name.into(),
            jwks: nhi_broker::domain::JwksSource::Url {
                url: format!("{url}/jwks.json"),
            },
            ..h.issuer_record()
        })
        .await
        .unwrap();
    (issuer, stop)
}

fn pattern_grant(h: &Harness, id: &str, pattern: &str) -> Grant {
    Grant {
        subject: SubjectMatch::Pattern(pattern.into()),
        ..h.grant(id, "unused", now() + 3600)
    }
}

async fn exchange_as(
    h: &Harness,
    issuer: &DemoIssuer,
    sub: &str,
    claims: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut token_claims = issuer.workload_claims(sub, AUDIENCE, now(), 300);
    for (k, v) in claims.as_object().unwrap() {
        token_claims[k] = v.clone();
    }
    let token = issuer.mint(&token_claims).unwrap().expose().to_string();
    h.post_token(&h.form(&token, &h.target)).await
}

#[tokio::test(flavor = "current_thread")]
async fn a_pattern_grant_releases_to_every_matching_subject_and_to_nothing_else() {
    let h = Harness::new().await;
    let org = format!("org-{}", h.id);
    let grant = pattern_grant(
        &h,
        &format!("pattern-{}", h.id),
        &format!("repo:{org}/*:ref:refs/heads/main"),
    );
    h.registry.put_grant(&grant).await.unwrap();

    for repo in ["app", "api", "web-frontend"] {
        let sub = format!("repo:{org}/{repo}:ref:refs/heads/main");
        let (status, body) = exchange_as(&h, &h.issuer, &sub, json!({})).await;
        assert_eq!(status, 200, "{sub}: {body}");
    }
    for sub in [
        format!("repo:{org}/app:ref:refs/heads/dev"),
        format!("repo:{org}/app/x:ref:refs/heads/main"),
        format!("repo:{org}-evil/app:ref:refs/heads/main"),
        format!("repo:{org}/app:ref:refs/heads/main:extra"),
    ] {
        let (status, body) = exchange_as(&h, &h.issuer, &sub, json!({})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{sub}: {body}"
        );
        let description = body["error_description"].as_str().unwrap();
        assert!(
            !description.contains(&grant.id),
            "never another grant's id: {description}"
        );
    }
    // The lease names the pattern grant and the real subject.
    let leases = h.leases().await;
    let lease = leases
        .iter()
        .find(|l| nhi_tests::attr(l, "subject") == format!("repo:{org}/api:ref:refs/heads/main"))
        .expect("lease for a pattern-matched subject");
    assert_eq!(nhi_tests::attr(lease, "grant_id"), grant.id);
}

#[tokio::test(flavor = "current_thread")]
async fn a_grant_for_two_issuers_serves_both_and_its_revocation_stops_both() {
    let h = Harness::new().await;
    let (ghe, _stop) = second_issuer(&h, "ghe").await;
    let (other, _stop_other) = second_issuer(&h, "unrelated").await;
    let sub = format!("repo:org/shared-{}:ref:refs/heads/main", h.id);
    let mut grant = h.grant(&format!("two-issuers-{}", h.id), &sub, now() + 3600);
    grant.issuers = vec![h.issuer.issuer.clone(), ghe.issuer.clone()];
    let mut write = RegistryWrite::new(&h.config.registry_table);
    write.grant(&grant, None, Expect::Absent).unwrap();
    let event = AuditEvent::new(AuditAction::Register, AuditOutcome::Applied, now());
    write.commit(&h.ledger(), &event).await.unwrap();

    assert_eq!(exchange_as(&h, &h.issuer, &sub, json!({})).await.0, 200);
    assert_eq!(exchange_as(&h, &ghe, &sub, json!({})).await.0, 200);
    let (status, _) = exchange_as(&h, &other, &sub, json!({})).await;
    assert_eq!(status, 400, "an issuer the grant does not name gets nothing");

    // Dropping an issuer deletes its copy: its tokens get nothing (the policy generation moved).
    let mut narrowed = grant.clone();
    narrowed.issuers.truncate(1);
    let item = h
        .registry
        .get(&format!("ISSUER#{}", h.issuer.issuer), &format!("GRANT#{}", grant.id))
        .await
        .unwrap();
    let mut write = RegistryWrite::new(&h.config.registry_table);
    write
        .grant(&narrowed, Some(&grant), Expect::from_read(item.as_ref()))
        .unwrap();
    write.commit(&h.ledger(), &event).await.unwrap();
    let copy = h
        .registry
        .get(&format!("ISSUER#{}", ghe.issuer), &format!("GRANT#{}", grant.id))
        .await
        .unwrap();
    assert!(copy.is_none(), "the dropped issuer's copy is gone");
    h.registry.put_grant(&grant).await.unwrap();

    // Revoked by the fanout path (a revocation record): every copy is switched off, so neither
    // issuer's tokens obtain anything, whatever the exchange's cache holds.
    let revocation = h.revoke(RevocationTarget::Grant, &grant.id, "offboarding", now()).await;
    let registry = nhi_broker::aws::dynamo::DynamoFanoutRegistry::new(h.dynamo.clone(), &h.config.registry_table);
    assert!(
        nhi_broker::ports::FanoutRegistry::disable_target(&registry, &revocation)
            .await
            .unwrap()
    );
    for issuer in [&h.issuer.issuer, &ghe.issuer] {
        let copy = h
            .registry
            .get(&format!("ISSUER#{issuer}"), &format!("GRANT#{}", grant.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(nhi_tests::attr(&copy, "status"), "revoked", "copy under {issuer}");
    }
    for issuer in [&*h.issuer, &*ghe] {
        let (status, body) = exchange_as(&h, issuer, &sub, json!({})).await;
        assert_eq!(status, 400, "{body}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn typed_and_expression_conditions_decide_and_the_refusal_names_stage_and_claim_only() {
    let h = Harness::new().await;
    let sub = format!("repo:org/typed-{}:ref:refs/heads/main", h.id);
    let mut grant = h.grant(&format!("typed-{}", h.id), &sub, now() + 3600);
    grant
        .claims
        .insert("groups".into(), ClaimCondition::Contains("deployers".into()));
    grant.claims.insert("fork".into(), ClaimCondition::Is(false));
    grant.claims.insert(
        "run_attempt".into(),
        ClaimCondition::Range {
            min: Some(1),
            max: Some(3),
        },
    );
    grant
        .claims
        .insert("ref".into(), ClaimCondition::Glob("refs/heads/*".into()));
    grant.condition = Some(
        "claims.repository_owner == 'secret-owner-value' && request.scope.all(s, s == 'read') && \
         target.environment == 'prod'"
            .into(),
    );
    h.registry.put_grant(&grant).await.unwrap();
    let good = json!({"groups": ["devs", "deployers"], "fork": false, "run_attempt": "2",
                      "ref": "refs/heads/main", "repository_owner": "secret-owner-value"});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let read_only = |h: &Harness, token: &str| {
        let mut form = h.form(token, &h.target);
        form.push(("scope".into(), "read".into()));
        form
    };
    let mint = |claims: serde_json::Value| {
        let mut c = h.issuer.workload_claims(&sub, AUDIENCE, now(), 300);
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        h.token(&c)
    };

    let (status, body) = h.post_token(&read_only(&h, &mint(good.clone()))).await;
    assert_eq!(status, 200, "{body}");

    let cases = [
        (with("groups", json!("deployers")), "claim 'groups'"),
        (with("fork", json!("false")), "claim 'fork'"),
        (with("run_attempt", json!("4")), "claim 'run_attempt'"),
        (with("ref", json!("refs/tags/v1")), "claim 'ref'"),
        (with("repository_owner", json!("someone-else")), "condition expression"),
    ];
    for (claims, expected) in cases {
        let (status, body) = h.post_token(&read_only(&h, &mint(claims.clone()))).await;
        let description = body["error_description"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{claims}: {body}");
        assert!(description.contains(expected), "{claims}: {description}");
        for hidden in ["secret-owner-value", "deployers", "refs/heads/*", &grant.id] {
            assert!(
                !description.contains(hidden),
                "no expected value or grant id: {description}"
            );
        }
    }
    // The condition sees the request: a scope it does not allow fails it.
    let mut form = h.form(&mint(good), &h.target);
    form.push(("scope".into(), "deploy".into()));
    let (status, body) = h.post_token(&form).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_description"].as_str().map(|d| d.contains("condition")),
        Some(true),
        "{body}"
    );
    // Every refusal was audited with its stage.
    let reasons: Vec<String> = h
        .audit_events()
        .await
        .iter()
        .filter(|e| nhi_tests::attr(e, "actor_subject") == sub && nhi_tests::attr(e, "outcome") == "denied")
        .map(|e| nhi_tests::attr(e, "reason").to_string())
        .collect();
    assert!(
        reasons.contains(&"policy_claim_not_satisfied".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"policy_condition_not_satisfied".to_string()),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn revoking_a_subject_blocks_it_through_a_pattern_grant_and_leaves_its_neighbours() {
    let h = Harness::new().await;
    let org = format!("org-{}", h.id);
    let grant = pattern_grant(
        &h,
        &format!("pattern-rev-{}", h.id),
        &format!("repo:{org}/*:ref:refs/heads/main"),
    );
    h.registry.put_grant(&grant).await.unwrap();
    let compromised = format!("repo:{org}/ci:ref:refs/heads/main");
    let neighbour = format!("repo:{org}/web:ref:refs/heads/main");
    assert_eq!(exchange_as(&h, &h.issuer, &compromised, json!({})).await.0, 200);

    h.revoke(
        RevocationTarget::Subject,
        &format!("{}#{compromised}", h.issuer.issuer),
        "compromised runner",
        now(),
    )
    .await;
    let (status, body) = exchange_as(&h, &h.issuer, &compromised, json!({})).await;
    assert_eq!(
        status, 400,
        "the revoked subject gets nothing through the pattern: {body}"
    );
    assert_eq!(exchange_as(&h, &h.issuer, &neighbour, json!({})).await.0, 200);
}

/// `count` grants on the harness' issuer, half exact (other subjects), half patterns (other
/// prefixes), written directly (BatchWriteItem), then one ordinary grant write to move the
/// issuer's policy generation.
async fn seed_grants(h: &Harness, count: usize) {
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("bulk-{}-{i}", h.id);
        let grant = if i % 2 == 0 {
            h.grant(
                &id,
                &format!("repo:bulk-{i}/app-{}:ref:refs/heads/main", h.id),
                now() + 3600,
            )
        } else {
            pattern_grant(h, &id, &format!("repo:bulk-{i}-{}/*:ref:refs/heads/main", h.id))
        };
        records.extend(nhi_broker::aws::dynamo::grant_records(&grant).unwrap());
    }
    for chunk in records.chunks(25) {
        let requests = chunk
            .iter()
            .map(|item| {
                aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(
                        aws_sdk_dynamodb::types::PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        let out = h
            .dynamo
            .batch_write_item()
            .request_items(&h.config.registry_table, requests)
            .send()
            .await
            .unwrap();
        assert!(out.unprocessed_items.unwrap_or_default().is_empty());
    }
    let marker = h.grant(&format!("marker-{}", h.id), "repo:marker:ref:x", now() + 3600);
    h.registry.put_grant(&marker).await.unwrap();
}

/// Cold (first) request, a new subject once the issuer is loaded, and a warm request: AWS calls
/// by operation and response bytes, on an issuer with `count` grants.
async fn measure(h: &Harness, count: usize) -> Vec<(String, serde_json::Value)> {
    let mut figures = Vec::new();
    let org_sub = |n: &str| format!("repo:bulk-1-{}/{n}:ref:refs/heads/main", h.id);
    for (label, sub) in [
        ("cold", org_sub("a")),
        ("new subject", h.subject.clone()),
        ("warm", org_sub("a")),
    ] {
        h.api.calls.reset();
        let (status, body) = exchange_as(h, &h.issuer, &sub, json!({})).await;
        assert_eq!(status, 200, "{label}: {body}");
        let calls = h.api.calls.by_operation();
        println!(
            "{count} grants, {label} JWT exchange: {} AWS calls {calls:?}, {} response bytes",
            h.api.calls.total(),
            h.api.calls.bytes_received()
        );
        figures.push((
            label.to_string(),
            json!({"calls": calls, "bytes": h.api.calls.bytes_received()}),
        ));
    }
    figures
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_costs_the_same_aws_calls_with_a_thousand_grants_on_the_issuer() {
    let mut h = Harness::new().await;
    // The longest allowed refresh interval, so that a slow (loaded) cold load is not followed by
    // a refresh: this measures what each kind of request reads, not the refresh timing.
    let mut config = h.config.clone();
    config.policy_cache = std::time::Duration::from_secs(60);
    h.use_config(config).await;
    seed_grants(&h, 1000).await;
    let figures = measure(&h, 1000).await;
    let calls = |i: usize| figures[i].1["calls"].clone();
    // Cold: the issuer and its generation (1 query), its 500 pattern grants (one 1 MB page), the
    // subject's exact grants (1 query), the target and the signing key ring (2 gets); then sign
    // and record.
    assert_eq!(calls(0)["DynamoDB.Query"], 3);
    assert_eq!(calls(0)["DynamoDB.GetItem"], 2);
    assert_eq!(calls(0)["KMS.Sign"], 1);
    assert_eq!(calls(0)["DynamoDB.TransactWriteItems"], 1);
    // Once the issuer is loaded, a subject never seen costs one query by key, not a read of all.
    assert_eq!(
        calls(1),
        json!({"DynamoDB.Query": 1, "KMS.Sign": 1, "DynamoDB.TransactWriteItems": 1}),
        "new subject"
    );
    assert!(
        figures[1].1["bytes"].as_u64().unwrap() < 8 * 1024,
        "a new subject reads its own grants only: {figures:?}"
    );
    assert_eq!(
        calls(2),
        json!({"KMS.Sign": 1, "DynamoDB.TransactWriteItems": 1}),
        "warm"
    );
}

/// The README's cold policy load at 10,000 grants (ignored: it seeds 10,000 items into moto).
/// `bash infra/local/stack.sh test --test policy_moto -- --ignored --nocapture`
#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn measure_cold_policy_load_at_ten_thousand_grants() {
    let mut h = Harness::new().await;
    // moto serves 4 MB slowly: keep the catalog for the longest allowed TTL so that the three
    // requests are cold, new subject and warm as on DynamoDB, not refreshes.
    let mut config = h.config.clone();
    config.policy_cache = std::time::Duration::from_secs(60);
    h.use_config(config).await;
    seed_grants(&h, 10_000).await;
    measure(&h, 10_000).await;
}

#[tokio::test(flavor = "current_thread")]
async fn revoking_a_pattern_grant_revokes_every_lease_it_issued() {
    let _one_at_a_time = nhi_tests::fanout::exclusive().await;
    let h = Harness::new().await;
    let mut f = nhi_tests::fanout::Fanout::new(&h).await;
    let org = format!("org-{}", h.id);
    let grant = pattern_grant(
        &h,
        &format!("pattern-leases-{}", h.id),
        &format!("repo:{org}/*:ref:refs/heads/main"),
    );
    h.registry.put_grant(&grant).await.unwrap();
    let mut leases = Vec::new();
    for repo in ["a", "b", "c"] {
        let (status, body) = exchange_as(
            &h,
            &h.issuer,
            &format!("repo:{org}/{repo}:ref:refs/heads/main"),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        leases.push(body["access_token"].as_str().unwrap().to_string());
    }
    h.revoke(RevocationTarget::Grant, &grant.id, "offboarding", f.now())
        .await;
    f.drain().await;
    let revoked: Vec<String> = h
        .leases()
        .await
        .iter()
        .filter(|l| nhi_tests::attr(l, "grant_id") == grant.id)
        .map(|l| nhi_tests::attr(l, "status").to_string())
        .collect();
    assert_eq!(
        revoked,
        ["revoked", "revoked", "revoked"],
        "every subject's lease through the pattern"
    );
    let (status, _) = exchange_as(&h, &h.issuer, &format!("repo:{org}/d:ref:refs/heads/main"), json!({})).await;
    assert_eq!(status, 400, "the revoked pattern grant issues nothing");
}
