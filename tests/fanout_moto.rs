//! revoke-fanout and expire-sweeper against moto: real stream records (emulated event source
//! mapping), a loopback webhook receiver, EventBridge and IAM in moto.

use aws_sdk_dynamodb::types::AttributeValue;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use nhi_broker::aws::dynamo::Item;
use nhi_broker::domain::{
    AuditAction, AuditEvent, AuditOutcome, Destination, DestinationKind, Lease, LeaseStatus, Revocation,
    RevocationTarget, TOKEN_TYPE_AWS_CREDENTIALS, TOKEN_TYPE_SECRET, Target, TargetKind,
};
use nhi_broker::ports::LeaseLedger;
use nhi_tests::fanout::{Fanout, Receiver, exclusive};
use nhi_tests::rotation::{random_policy, secret_with_value};
use nhi_tests::{Harness, LogCapture, attr, form_request, now};
use serde_json::{Value, json};
use std::time::Instant;

/// An operator's revocation, as brokerctl records it.
async fn revoke(h: &Harness, kind: RevocationTarget, id: &str, reason: &str, at: i64) -> Revocation {
    h.revoke(kind, id, reason, at).await
}

async fn webhook(h: &Harness, name: &str, url: &str, secrets: &[&str]) -> String {
    let id = format!("{name}-{}", h.id);
    h.registry
        .put_destination(&Destination {
            id: id.clone(),
            kind: DestinationKind::Webhook { url: url.into() },
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            owner: "team".into(),
            enabled: true,
        })
        .await
        .unwrap();
    id
}

async fn get(h: &Harness, table: &str, pk: &str, sk: &str) -> Option<Item> {
    h.dynamo
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

async fn lease_status(h: &Harness, lease_id: &str) -> String {
    let item = get(h, &h.config.leases_table, &format!("LEASE#{lease_id}"), "LEASE")
        .await
        .unwrap();
    attr(&item, "status").to_string()
}

async fn delivery(h: &Harness, destination_id: &str, event_id: &str) -> Item {
    get(
        h,
        &h.config.registry_table,
        &format!("DEST#{destination_id}"),
        &format!("DELIVERY#{event_id}"),
    )
    .await
    .expect("delivery record")
}

fn num(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// Verify a pushed SET with the broker's published keys, as a receiver would.
async fn verify_set(h: &Harness, token: &str, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
    let jwks = h.broker_jwks().await;
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("SET signed by a published key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.set_audience(&[audience]);
    validation.set_issuer(&[&h.config.broker_issuer]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("SET verifies against the broker JWKS")
        .claims
}

/// A JWT lease recorded as exchange records it (without the signing, for volume).
fn jwt_lease(h: &Harness, grant_id: &str, expires_at: i64, destination: Option<String>) -> Lease {
    Lease {
        lease_id: uuid::Uuid::new_v4().to_string(),
        kind: TargetKind::Jwt,
        issuer: h.issuer.issuer.clone(),
        subject: h.subject.clone(),
        grant_id: grant_id.into(),
        target: h.target.clone(),
        environment: "prod".into(),
        scope: vec![],
        subject_token_fingerprint: "sha256:test".into(),
        key_id: "test".into(),
        secret_version: None,
        aws_access_key_id: None,
        issued_at: now(),
        expires_at,
        status: LeaseStatus::Active,
        destination,
    }
}

async fn record_leases(h: &Harness, leases: &[Lease]) {
    let ledger = h.ledger();
    for lease in leases {
        let event = AuditEvent {
            lease_id: Some(lease.lease_id.clone()),
            ..AuditEvent::new(AuditAction::TokenExchange, AuditOutcome::Released, lease.issued_at)
        };
        ledger.record_release(lease, &event, None).await.unwrap();
    }
}

async fn exchange_jwt(h: &Harness) -> (String, String) {
    let (status, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    // jti = lease id.
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    (token, claims["jti"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "current_thread")]
async fn revoking_a_secret_revokes_every_lease_and_tells_every_destination_once_with_a_verifiable_set() {
    let _one_at_a_time = exclusive().await;
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    // Registered first: exchange caches an issuer's grants for a few seconds.
    let caller = h.introspection_caller().await;
    let value = format!("s3cr3t-{}", uuid::Uuid::new_v4());
    let secret = secret_with_value(&h, "fanout-db", random_policy(), &value).await;
    let mut grant = h.grant(&format!("db-readers-{}", h.id), &h.subject, now() + 3600);
    grant.targets = vec![secret.clone()];
    h.registry.put_grant(&grant).await.unwrap();

    let mut leases = Vec::new();
    for _ in 0..3 {
        let mut form = h.form(&h.token(&h.claims()), &secret);
        form.push(("requested_token_type".into(), TOKEN_TYPE_SECRET.into()));
        let (status, body) = h.post_token(&form).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], value.as_str());
        leases.push(body["lease_id"].as_str().unwrap().to_string());
    }

    let first = Receiver::start(202).await;
    let second = Receiver::start(200).await;
    let first_id = webhook(&h, "ci", &first.url, &[&secret]).await;
    let second_id = webhook(&h, "saas", &second.url, &[&secret]).await;
    let bus_name = format!("nhi-{}", h.id);
    let bus_arn = f
        .clients
        .eventbridge
        .create_event_bus()
        .name(&bus_name)
        .send()
        .await
        .unwrap()
        .event_bus_arn()
        .unwrap()
        .to_string();
    let bus_id = format!("bus-{}", h.id);
    h.registry
        .put_destination(&Destination {
            id: bus_id.clone(),
            kind: DestinationKind::EventBridge {
                event_bus_arn: bus_arn.clone(),
            },
            secrets: vec![secret.clone()],
            owner: "team".into(),
            enabled: true,
        })
        .await
        .unwrap();

    let revocation = revoke(&h, RevocationTarget::Secret, &secret, "suspected leak", f.now()).await;
    let outcome = f.drain().await;
    assert_eq!(outcome.failures_reported, 0);
    assert!(outcome.dead_lettered.is_empty());

    for lease in &leases {
        assert_eq!(lease_status(&h, lease).await, "revoked", "{lease}");
    }
    // Introspection says inactive for every lease.
    for lease in &leases {
        let (status, body) = h
            .call(form_request("/introspect", &[("token", lease)], Some(&caller)))
            .await;
        assert_eq!((status, body), (200, json!({"active": false})));
    }
    // The secret is disabled: nothing more is released.
    let mut form = h.form(&h.token(&h.claims()), &secret);
    form.push(("requested_token_type".into(), TOKEN_TYPE_SECRET.into()));
    let (status, body) = h.post_token(&form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")));

    // One SET per webhook, verifiable with the broker JWKS, naming the secret; nothing else.
    let mut tokens = Vec::new();
    for (receiver, destination_id) in [(&first, &first_id), (&second, &second_id)] {
        let received = receiver.received();
        assert_eq!(received.len(), 1, "{destination_id}");
        assert_eq!(received[0].content_type, "application/secevent+jwt");
        let claims = verify_set(&h, &received[0].body, &receiver.url).await;
        assert_eq!(claims["txn"], revocation.revocation_id);
        assert_eq!(
            claims["sub_id"],
            json!({"format": "opaque", "id": format!("secret:{secret}")})
        );
        let event = &claims["events"]["urn:nhi-broker:secevent:credential-revoked"];
        assert_eq!(event["target_id"], secret.as_str());
        assert_eq!(event["reason"], "suspected leak");
        assert!(!received[0].body.contains(&value));
        tokens.push(received[0].body.clone());
        // The delivery is recorded with its outcome.
        let record = delivery(&h, destination_id, &revocation.revocation_id).await;
        assert_eq!(attr(&record, "status"), "confirmed");
        assert_eq!(num(&record, "attempts"), 1);
        assert!(attr(&record, "receipt").starts_with("http_20"));
        assert!(
            !record.contains_key("delivery_shard"),
            "confirmed deliveries leave the retry index"
        );
    }
    let bus_record = delivery(&h, &bus_id, &revocation.revocation_id).await;
    assert_eq!(attr(&bus_record, "status"), "confirmed");
    assert!(
        !attr(&bus_record, "receipt").is_empty(),
        "EventBridge event id kept as receipt"
    );

    // One audit event per revoked lease.
    let events = h
        .scan(
            &h.config.audit_table,
            "reason = :r AND target = :t",
            &[(":r", "suspected leak"), (":t", &secret)],
        )
        .await;
    let mut audited: Vec<&str> = events
        .iter()
        .map(|e| attr(e, "lease_id"))
        .filter(|l| !l.is_empty())
        .collect();
    audited.sort();
    let mut expected: Vec<&str> = leases.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(audited, expected);

    tokens.push(value);
    logs.assert_free_of(&tokens);
}

#[tokio::test(flavor = "current_thread")]
async fn revoking_a_grant_denies_its_jwts_and_a_replayed_batch_delivers_nothing_twice() {
    let _one_at_a_time = exclusive().await;
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let caller = h.introspection_caller().await;
    let receiver = Receiver::start(202).await;
    let sync_job = webhook(&h, "sync-job", &receiver.url, &[]).await;
    let mut grant = h.grant(&h.grant_id, &h.subject, now() + 86_400);
    grant.delivers_to = Some(sync_job.clone());
    h.registry.put_grant(&grant).await.unwrap();

    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(exchange_jwt(&h).await);
    }
    let (_, before) = h
        .call(form_request("/introspect", &[("token", &issued[0].0)], Some(&caller)))
        .await;
    assert_eq!(before["active"], true);

    let revocation = revoke(&h, RevocationTarget::Grant, &h.grant_id, "offboarding", f.now()).await;
    let outcome = f.drain().await;
    assert_eq!(outcome.failures_reported, 0);

    for (token, lease_id) in &issued {
        assert_eq!(lease_status(&h, lease_id).await, "revoked");
        let deny = get(&h, &h.config.leases_table, &format!("DENY#{lease_id}"), "DENY").await;
        let deny = deny.expect("jti on the deny list");
        assert!(
            num(&deny, "ttl") > now(),
            "the deny entry lives until the token expires"
        );
        let (status, body) = h
            .call(form_request("/introspect", &[("token", token)], Some(&caller)))
            .await;
        assert_eq!((status, body), (200, json!({"active": false})));
    }
    // The grant itself is revoked: no new token.
    let (status, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    // The destination holding the leases' copies got one SET.
    assert_eq!(receiver.received().len(), 1);
    let claims = verify_set(&h, &receiver.received()[0].body, &receiver.url).await;
    assert_eq!(claims["sub_id"]["id"], format!("grant:{}", h.grant_id));

    // Replaying the very same batches (at-least-once delivery) changes nothing and sends nothing.
    let batches = f.events.clone();
    assert!(!batches.is_empty());
    for _ in 0..2 {
        for batch in &batches {
            let response = nhi_broker::jobs::handle_fanout_event(&f.service, batch.clone(), None)
                .await
                .unwrap();
            assert_eq!(response["batchItemFailures"], json!([]));
        }
    }
    assert_eq!(receiver.received().len(), 1, "no second delivery after a replay");
    let record = delivery(&h, &sync_job, &revocation.revocation_id).await;
    assert_eq!((attr(&record, "status"), num(&record, "attempts")), ("confirmed", 1));
    let audited = h
        .scan(
            &h.config.audit_table,
            "grant_id = :g AND reason = :r",
            &[(":g", &h.grant_id), (":r", "offboarding")],
        )
        .await;
    assert_eq!(
        audited.len(),
        3,
        "one revocation event per lease, none from the replays"
    );

    let mut secrets: Vec<String> = issued.into_iter().map(|(t, _)| t).collect();
    secrets.extend(receiver.received().into_iter().map(|r| r.body));
    logs.assert_free_of(&secrets);
}

/// The retry schedule runs while the first send to a slow destination is still in flight: the
/// attempt was claimed before it was sent, so the record is not due and nothing is sent twice.
#[tokio::test(flavor = "current_thread")]
async fn one_attempt_is_one_post_even_when_the_retry_schedule_runs_during_the_first_send() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let receiver = Receiver::start_slow(202, std::time::Duration::from_millis(1500)).await;
    let sync_job = webhook(&h, "slow-sync-job", &receiver.url, &[]).await;
    let mut grant = h.grant(&h.grant_id, &h.subject, now() + 86_400);
    grant.delivers_to = Some(sync_job.clone());
    h.registry.put_grant(&grant).await.unwrap();
    exchange_jwt(&h).await;

    let revocation = revoke(&h, RevocationTarget::Grant, &h.grant_id, "offboarding", f.now()).await;
    // The retry schedule: another revoke-fanout invocation at the same time.
    let schedule = Fanout::new(&h).await;
    schedule.set_clock(f.now());
    let retries = async {
        let mut report = nhi_broker::fanout::FanoutReport::default();
        for _ in 0..8 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            report.add(&schedule.service.retry_due().await.unwrap());
        }
        report
    };
    let (outcome, retried) = tokio::join!(f.drain(), retries);
    assert_eq!(outcome.failures_reported, 0);
    assert_eq!(
        receiver.received().len(),
        1,
        "one SET, however often the retry schedule ran meanwhile ({retried:?})"
    );
    let record = delivery(&h, &sync_job, &revocation.revocation_id).await;
    assert_eq!((attr(&record, "status"), num(&record, "attempts")), ("confirmed", 1));
}

#[tokio::test(flavor = "current_thread")]
async fn a_destination_answering_500_is_retried_with_backoff_then_flagged_unconfirmed() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    f.service.settings.max_attempts = 3;
    f.service.settings.backoff_seconds = 30;
    let secret = secret_with_value(&h, "flaky", random_policy(), "v1-value-not-logged").await;
    let receiver = Receiver::start(500).await;
    let destination = webhook(&h, "flaky-saas", &receiver.url, &[&secret]).await;
    let t0 = f.now();

    let revocation = revoke(&h, RevocationTarget::Secret, &secret, "rotate-out", t0).await;
    let outcome = f.drain().await;
    assert_eq!(
        outcome.failures_reported, 0,
        "a failing destination does not fail the record"
    );
    assert_eq!(receiver.received().len(), 1);
    let record = delivery(&h, &destination, &revocation.revocation_id).await;
    assert_eq!((attr(&record, "status"), num(&record, "attempts")), ("pending", 1));
    assert_eq!(attr(&record, "last_error"), "http_500");
    assert_eq!(num(&record, "next_attempt_at"), t0 + 30);

    // Not due yet: nothing is sent.
    f.set_clock(t0 + 29);
    f.service.retry_due().await.unwrap();
    assert_eq!(receiver.received().len(), 1);
    // Due: second attempt, backoff doubles.
    f.set_clock(t0 + 30);
    let report = f.service.retry_due().await.unwrap();
    assert_eq!(report.deliveries_pending, 1);
    assert_eq!(receiver.received().len(), 2);
    let record = delivery(&h, &destination, &revocation.revocation_id).await;
    assert_eq!(num(&record, "next_attempt_at"), t0 + 30 + 60);
    // Third and last attempt: unconfirmed, the destination is flagged exposed.
    f.set_clock(t0 + 90);
    let report = f.service.retry_due().await.unwrap();
    assert_eq!(report.deliveries_unconfirmed, 1);
    assert_eq!(receiver.received().len(), 3);
    let record = delivery(&h, &destination, &revocation.revocation_id).await;
    assert_eq!(attr(&record, "status"), "unconfirmed");
    assert!(!record.contains_key("delivery_shard"));
    let dest = get(&h, &h.config.registry_table, &format!("DEST#{destination}"), "#DEST")
        .await
        .unwrap();
    assert_eq!(dest.get("exposed").and_then(|v| v.as_bool().ok()), Some(&true));
    assert_eq!(num(&dest, "unconfirmed_deliveries"), 1);
    let flagged = h
        .scan(
            &h.config.audit_table,
            "target = :t",
            &[(":t", &format!("destination:{destination}"))],
        )
        .await;
    assert_eq!(flagged.len(), 1);
    assert_eq!(attr(&flagged[0], "outcome"), "unconfirmed");

    // Every attempt carried the same SET jti, so a receiver can drop duplicates.
    let mut jtis = Vec::new();
    for received in receiver.received() {
        jtis.push(verify_set(&h, &received.body, &receiver.url).await["jti"].clone());
    }
    assert!(jtis.windows(2).all(|w| w[0] == w[1]), "{jtis:?}");
    // Nothing left to retry.
    f.set_clock(t0 + 10_000);
    f.service.retry_due().await.unwrap();
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn the_sweeper_flags_a_destination_that_did_not_confirm_within_the_window() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let secret = secret_with_value(&h, "drift", random_policy(), "drifting-value-1").await;
    let receiver = Receiver::start(503).await;
    let destination = webhook(&h, "slow", &receiver.url, &[&secret]).await;
    let t0 = f.now();
    let revocation = revoke(&h, RevocationTarget::Secret, &secret, "drift-check", t0).await;
    f.drain().await;
    assert_eq!(
        attr(&delivery(&h, &destination, &revocation.revocation_id).await, "status"),
        "pending"
    );

    // Inside the window: nothing flagged.
    f.set_clock(t0 + 3599);
    let report = f.sweeper.run().await.unwrap();
    assert_eq!(
        attr(&delivery(&h, &destination, &revocation.revocation_id).await, "status"),
        "pending"
    );
    // Past it (default 3600 s): unconfirmed, whatever the retries say.
    f.set_clock(t0 + 3600);
    let report_after = f.sweeper.run().await.unwrap();
    assert!(report_after.deliveries_unconfirmed >= 1, "{report:?} {report_after:?}");
    let record = delivery(&h, &destination, &revocation.revocation_id).await;
    assert_eq!(attr(&record, "status"), "unconfirmed");
    let dest = get(&h, &h.config.registry_table, &format!("DEST#{destination}"), "#DEST")
        .await
        .unwrap();
    assert_eq!(dest.get("exposed").and_then(|v| v.as_bool().ok()), Some(&true));
}

#[tokio::test(flavor = "current_thread")]
async fn overlapping_sweeps_expire_each_lease_once_and_tell_the_destination_holding_the_copy() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let receiver = Receiver::start(202).await;
    let sync_job = webhook(&h, "copies", &receiver.url, &[]).await;
    let t0 = f.now();
    let leases: Vec<Lease> = (0..6)
        .map(|i| jwt_lease(&h, &h.grant_id, t0 + 60 + i, (i % 2 == 0).then(|| sync_job.clone())))
        .collect();
    record_leases(&h, &leases).await;

    // Not yet expired: a sweep leaves them alone.
    f.set_clock(t0 + 59);
    f.sweeper.run().await.unwrap();
    for lease in &leases {
        assert_eq!(lease_status(&h, &lease.lease_id).await, "active");
    }

    // Two runs at once (a slow run overlapping the next schedule).
    f.set_clock(t0 + 120);
    let sdk = nhi_broker::aws::sdk_config().await;
    let mut other = nhi_broker::wiring::sweep_service(&h.config, nhi_broker::aws::Clients::new(&sdk));
    other.clock = f.clock.clone();
    let (a, b) = tokio::join!(f.sweeper.run(), other.run());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.leases_expired + b.leases_expired >= leases.len() as u64,
        "{a:?} {b:?}"
    );
    for lease in &leases {
        assert_eq!(lease_status(&h, &lease.lease_id).await, "expired");
        let audited = h
            .scan(
                &h.config.audit_table,
                "lease_id = :l AND reason = :r",
                &[(":l", &lease.lease_id), (":r", "lease_expired")],
            )
            .await;
        assert_eq!(audited.len(), 1, "expired exactly once: {}", lease.lease_id);
        let records = h
            .scan(
                &h.config.revocations_table,
                "pk = :pk",
                &[(":pk", &format!("lease#{}", lease.lease_id))],
            )
            .await;
        assert_eq!(records.len(), usize::from(lease.destination.is_some()));
    }

    // Fanout tells the destination about each expired lease it holds a copy of.
    let outcome = f.drain().await;
    assert_eq!(outcome.failures_reported, 0);
    let told: Vec<Value> = {
        let mut told = Vec::new();
        for r in receiver.received() {
            told.push(verify_set(&h, &r.body, &receiver.url).await["sub_id"]["id"].clone());
        }
        told
    };
    let deliveries = h
        .scan(
            &h.config.registry_table,
            "pk = :pk",
            &[(":pk", &format!("DEST#{sync_job}"))],
        )
        .await;
    assert_eq!(told.len(), 3, "{deliveries:?} {outcome:?}");
    for lease in leases.iter().filter(|l| l.destination.is_some()) {
        assert!(told.contains(&json!(format!("lease:{}", lease.lease_id))));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_expired_approval_revokes_the_grant_and_its_leases() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let issued = [exchange_jwt(&h).await, exchange_jwt(&h).await];
    let t0 = f.now();
    // The approval is cut short after the tokens were issued.
    h.registry
        .put_grant(&h.grant(&h.grant_id, &h.subject, t0 + 5))
        .await
        .unwrap();

    f.set_clock(t0 + 4);
    f.sweeper.run().await.unwrap();
    assert_eq!(lease_status(&h, &issued[0].1).await, "active");

    f.set_clock(t0 + 10);
    let report = f.sweeper.run().await.unwrap();
    assert!(report.grants_revoked >= 1, "{report:?}");
    let grant = get(
        &h,
        &h.config.registry_table,
        &format!("ISSUER#{}", h.issuer.issuer),
        &format!("GRANT#{}", h.grant_id),
    )
    .await
    .unwrap();
    assert_eq!(attr(&grant, "status"), "revoked");
    assert!(!grant.contains_key("approval_shard"));
    // A second run finds nothing more to do for it.
    let again = f.sweeper.run().await.unwrap();
    let records = h
        .scan(
            &h.config.revocations_table,
            "pk = :pk",
            &[(":pk", &format!("grant#{}", h.grant_id))],
        )
        .await;
    assert_eq!(records.len(), 1, "{again:?}");

    f.drain().await;
    for (_, lease_id) in &issued {
        assert_eq!(lease_status(&h, lease_id).await, "revoked");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_revocation_continues_across_invocations_without_losing_its_place() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let leases: Vec<Lease> = (0..25)
        .map(|_| jwt_lease(&h, &h.grant_id, now() + 3600, None))
        .collect();
    record_leases(&h, &leases).await;
    f.service.settings.page_size = 10;
    // Every invocation is already at its deadline: one page each, then hand over.
    f.deadline = Some(Instant::now());

    let revocation = revoke(&h, RevocationTarget::Grant, &h.grant_id, "big", f.now()).await;
    let outcome = f.drain().await;
    assert_eq!(outcome.failures_reported, 0);
    assert_eq!(
        outcome.invocations, 3,
        "25 leases in pages of 10: the record and two continuations"
    );
    for lease in &leases {
        assert_eq!(lease_status(&h, &lease.lease_id).await, "revoked");
    }
    let record = get(
        &h,
        &h.config.revocations_table,
        &format!("grant#{}", h.grant_id),
        &format!("{:012}#{}", revocation.at, revocation.revocation_id),
    )
    .await
    .unwrap();
    assert_eq!(num(&record, "resume_passes"), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn revoking_a_subject_denies_exactly_its_aws_sessions_on_the_role_until_they_expire() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let role_name = format!("deployer-{}", h.id);
    let role_arn = f
        .clients
        .iam
        .create_role()
        .role_name(&role_name)
        .path("/nhi-broker/")
        .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .arn()
        .to_string();
    h.registry
        .put_target(&Target {
            id: role_arn.clone(),
            kind: TargetKind::AwsRole,
            environment: "prod".into(),
            owner: "team".into(),
            enabled: true,
        })
        .await
        .unwrap();
    let mut grant = h.grant(&format!("aws-{}", h.id), &h.subject, now() + 7200);
    grant.targets = vec![role_arn.clone()];
    grant.max_ttl_seconds = 3600;
    h.registry.put_grant(&grant).await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut form = h.form(&h.token(&h.claims()), &role_arn);
        form.push(("requested_token_type".into(), TOKEN_TYPE_AWS_CREDENTIALS.into()));
        let (status, body) = h.post_token(&form).await;
        assert_eq!(status, 200, "{body}");
        sessions.push(body["lease_id"].as_str().unwrap().to_string());
    }

    let subject = format!("{}#{}", h.issuer.issuer, h.subject);
    revoke(&h, RevocationTarget::Subject, &subject, "workload compromised", f.now()).await;
    assert_eq!(f.drain().await.failures_reported, 0);

    let policy = f
        .clients
        .iam
        .get_role_policy()
        .role_name(&role_name)
        .policy_name("nhi-broker-revoked-sessions")
        .send()
        .await
        .unwrap();
    let document = policy.policy_document();
    let document: Value = serde_json::from_str(document)
        .or_else(|_| serde_json::from_str(&urlencoding_decode(document)))
        .unwrap();
    let denied = &document["Statement"][0];
    assert_eq!(denied["Effect"], "Deny");
    let mut ids: Vec<String> = denied["Condition"]["StringEquals"]["aws:SourceIdentity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    sessions.sort();
    assert_eq!(
        ids, sessions,
        "exactly the revoked sessions (SourceIdentity = lease id)"
    );
    for lease in &sessions {
        assert_eq!(lease_status(&h, lease).await, "revoked");
    }

    // Once the sessions have expired, the entries are pruned and the policy goes away.
    f.service
        .sessions
        .deny_sessions(&role_arn, &[], now() + 3601)
        .await
        .unwrap();
    let gone = f
        .clients
        .iam
        .get_role_policy()
        .role_name(&role_name)
        .policy_name("nhi-broker-revoked-sessions")
        .send()
        .await;
    assert!(gone.is_err());
}

fn urlencoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Measurement, not a timed test: `bash infra/local/stack.sh test revoking_1000 -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn revoking_1000_leases_is_measured() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    let leases: Vec<Lease> = (0..1000)
        .map(|_| jwt_lease(&h, &h.grant_id, now() + 3600, None))
        .collect();
    let setup = Instant::now();
    record_leases(&h, &leases).await;
    println!("setup: 1000 leases recorded in {:.1} s", setup.elapsed().as_secs_f64());
    f.clients.calls.reset();
    let started = Instant::now();
    revoke(&h, RevocationTarget::Grant, &h.grant_id, "measured", f.now()).await;
    let outcome = f.drain().await;
    let elapsed = started.elapsed().as_secs_f64();
    for lease in leases.iter().step_by(97) {
        assert_eq!(lease_status(&h, &lease.lease_id).await, "revoked");
    }
    let calls = f.clients.calls.by_operation();
    let total = f.clients.calls.total();
    println!(
        "revoked 1000 leases end to end (record -> stream -> fanout) in {elapsed:.1} s, {} invocation(s); \
         AWS calls {total} ({:.2} per lease): {calls:?}",
        outcome.invocations,
        total as f64 / 1000.0
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_poison_record_is_retried_a_bounded_number_of_times_then_dead_lettered_and_later_records_proceed() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    // A revocation record no fanout can act on (no target kind), then a good one behind it.
    let at = f.now();
    h.dynamo
        .put_item()
        .table_name(&h.config.revocations_table)
        .item("pk", AttributeValue::S(format!("grant#poison-{}", h.id)))
        .item("sk", AttributeValue::S(format!("{at:012}#poison")))
        .item("record_type", AttributeValue::S("revocation".into()))
        .item("revocation_id", AttributeValue::S("poison".into()))
        .item("target_id", AttributeValue::S("poison".into()))
        .send()
        .await
        .unwrap();
    let lease = jwt_lease(&h, &h.grant_id, now() + 600, None);
    record_leases(&h, std::slice::from_ref(&lease)).await;
    revoke(&h, RevocationTarget::Lease, &lease.lease_id, "after-poison", at).await;

    let outcome = f.drain().await;
    assert_eq!(
        outcome.failures_reported, 6,
        "the first attempt and 5 retries (MaximumRetryAttempts)"
    );
    assert_eq!(outcome.dead_lettered.len(), 1);
    assert_eq!(
        lease_status(&h, &lease.lease_id).await,
        "revoked",
        "the stream moved past the poison record"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_revoked_broker_jwt_is_refused_as_a_subject_token() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut f = Fanout::new(&h).await;
    // The broker trusted as an issuer (chained exchanges), with its own JWKS.
    let jwks = serde_json::to_string(&h.broker_jwks().await).unwrap();
    h.registry
        .put_issuer(&nhi_broker::domain::Issuer {
            issuer: h.config.broker_issuer.clone(),
            name: "nhi-broker".into(),
            audiences: vec![h.target.clone()],
            jwks: nhi_broker::domain::JwksSource::Static { jwks },
            algorithms: vec!["ES256".into()],
            enabled: true,
            one_time_jti: false,
            pattern_prefix_segments: 1,
        })
        .await
        .unwrap();
    let mut chained = h.grant(&format!("chained-{}", h.id), &h.subject, now() + 3600);
    chained.issuers = vec![h.config.broker_issuer.clone()];
    chained.targets = vec![h.staging_target.clone()];
    chained.environment = "staging".into();
    h.registry.put_grant(&chained).await.unwrap();

    // The same broker token may also call introspection (a gateway holding a broker JWT).
    let mut introspects = h.grant(&format!("chained-introspect-{}", h.id), &h.subject, now() + 3600);
    introspects.issuers = vec![h.config.broker_issuer.clone()];
    introspects.targets = vec![nhi_broker::domain::INTROSPECTION_TARGET.into()];
    h.registry.put_grant(&introspects).await.unwrap();

    let (broker_token, lease_id) = exchange_jwt(&h).await;
    let (status, body) = h.post_token(&h.form(&broker_token, &h.staging_target)).await;
    assert_eq!(status, 200, "a live broker token is exchangeable: {body}");
    let introspect = || form_request("/introspect", &[("token", "x")], Some(&broker_token));
    assert_eq!(h.call(introspect()).await.0, 200, "and authenticates introspection");

    revoke(&h, RevocationTarget::Lease, &lease_id, "chain-cut", f.now()).await;
    f.drain().await;
    let (status, body) = h.post_token(&h.form(&broker_token, &h.staging_target)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error_description"], "subject_token has been revoked");
    // Dead everywhere: as a Bearer caller too.
    let response = h.api.handle(introspect()).await;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // A holder's own revocation (RFC 7009) denies the jti in the same transaction, before fanout.
    let (second, _) = exchange_jwt(&h).await;
    let response = h.api.handle(form_request("/revoke", &[("token", &second)], None)).await;
    assert_eq!(response.status(), 200);
    let (status, body) = h.post_token(&h.form(&second, &h.staging_target)).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("subject_token has been revoked"))
    );
}
