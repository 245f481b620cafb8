//! brokerctl end to end against moto (run by `make test`): the real binary registers, applies,
//! revokes, inventories and verifies the audit trail; a workload exchanges through the real API
//! and revoke-fanout runs from the real stream.

use aws_sdk_dynamodb::types::AttributeValue;
use nhi_tests::fanout::{Fanout, Receiver, exclusive};
use nhi_tests::{Harness, LogCapture, now};

mod common;

use common::{brokerctl, brokerctl_with};

#[tokio::test(flavor = "current_thread")]
async fn an_operator_registers_inventories_revokes_and_verifies_the_audit_trail_with_brokerctl() {
    let _one_at_a_time = exclusive().await;
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let mut fanout = Fanout::new(&h).await;
    fanout.service.settings.max_attempts = 1;
    let ci = Receiver::start(202).await;
    let broken = Receiver::start(500).await;
    let secret = format!("payments-db-{}", h.id);
    let value = format!("pw-{}", uuid::Uuid::new_v4());

    // Issuer and secret from flags; the value from stdin, never echoed.
    let issuer = h.issuer.issuer.clone();
    let run = brokerctl(
        &[
            "issuer",
            "put",
            "--issuer",
            &issuer,
            "--name",
            "ci",
            "--audience",
            "nhi-broker",
            "--jwks-url",
            &format!("{issuer}/jwks.json"),
            "--alg",
            "ES256",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = brokerctl(
        &[
            "secret",
            "put",
            &secret,
            "--owner",
            "payments",
            "--environment",
            "prod",
            "--value-stdin",
        ],
        Some(&format!("{value}\n")),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains(&value) && !run.stderr.contains(&value));
    // A second value is refused: later values come from rotation.
    let again = brokerctl(
        &[
            "secret",
            "put",
            &secret,
            "--owner",
            "payments",
            "--environment",
            "prod",
            "--generate",
            "32",
        ],
        None,
    );
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already has a value"), "{}", again.stderr);

    // Grant and destinations from a manifest: a dry run shows the diff, --yes writes it once.
    let grant_id = format!("payments-readers-{}", h.id);
    let manifest = format!(
        r#"
grants:
  - id: {grant_id}
    issuer: {issuer}
    subject: {subject}
    environment: prod
    targets: [{secret}]
    scopes: [read]
    max_ttl_seconds: 600
    approval_expires_at: "2099-01-01T00:00:00Z"
    owner: payments
    justification: nightly reconciliation job
destinations:
  - id: ci-{id}
    kind: {{ type: webhook, url: "{ci}" }}
    secrets: [{secret}]
    owner: payments
    enabled: true
  - id: broken-{id}
    kind: {{ type: webhook, url: "{broken}" }}
    secrets: [{secret}]
    owner: payments
    enabled: true
"#,
        subject = h.subject,
        id = h.id,
        ci = ci.url,
        broken = broken.url,
    );
    let path = std::env::temp_dir().join(format!("manifest-{}.yaml", h.id));
    std::fs::write(&path, &manifest).unwrap();
    let path = path.to_str().unwrap();
    let plan = brokerctl(&["apply", "-f", path], None);
    assert_eq!(plan.code, 4, "a dry run with changes exits 4: {}", plan.stderr);
    assert!(plan.stdout.contains(&format!("+ grant {grant_id}")), "{}", plan.stdout);
    assert!(plan.stdout.contains("--yes"));
    let applied = brokerctl(&["apply", "-f", path, "--yes"], None);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert!(applied.stdout.contains("applied 3 change(s)"), "{}", applied.stdout);
    let idempotent = brokerctl(&["apply", "-f", path], None);
    assert_eq!(idempotent.code, 0);
    assert!(idempotent.stdout.contains("nothing to change"), "{}", idempotent.stdout);
    // A changed field shows as a diff.
    std::fs::write(path, manifest.replace("max_ttl_seconds: 600", "max_ttl_seconds: 300")).unwrap();
    let changed = brokerctl(&["apply", "-f", path], None);
    assert!(
        changed.stdout.contains("max_ttl_seconds: 600 -> 300"),
        "{}",
        changed.stdout
    );
    std::fs::write(path, &manifest).unwrap();

    // A workload exchanges for the secret.
    let mut form = h.form(&h.token(&h.claims()), &secret);
    form.push((
        "requested_token_type".into(),
        nhi_broker::domain::TOKEN_TYPE_SECRET.into(),
    ));
    let (status, body) = h.post_token(&form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], value.as_str());
    let lease_id = body["lease_id"].as_str().unwrap().to_string();
    let version = body["secret_version"].as_str().unwrap().to_string();

    // Inventory shows the lease, its version, the destinations and the grant.
    let inventory = brokerctl(&["inventory", &secret, "--output", "json"], None);
    assert_eq!(inventory.code, 0, "{}", inventory.stderr);
    let doc = inventory.json();
    let entry = &doc["secrets"][0];
    assert_eq!(entry["current_version"], version.as_str());
    assert_eq!(entry["active_leases"][0]["lease_id"], lease_id.as_str());
    assert_eq!(entry["active_leases"][0]["version"], version.as_str());
    assert_eq!(entry["active_leases"][0]["subject"], h.subject.as_str());
    assert_eq!(entry["grants"][0]["id"], grant_id.as_str());
    assert_eq!(entry["destinations"].as_array().unwrap().len(), 2);
    let people = brokerctl(&["inventory", &secret], None);
    assert!(
        people.stdout.contains(&lease_id) && people.stdout.contains("active leases: 1"),
        "{}",
        people.stdout
    );

    // Unknown ids and bad files are clear errors, not panics.
    let unknown = brokerctl(&["revoke", "grant", "no-such-grant", "--reason", "x"], None);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("no grant with id"), "{}", unknown.stderr);
    let missing_reason = brokerctl(&["revoke", "secret", &secret], None);
    assert_eq!(missing_reason.code, 2);
    std::fs::write(format!("{path}.bad.yaml"), "grants: [{id: x, subjekt: y}]").unwrap();
    let bad = brokerctl(&["apply", "-f", &format!("{path}.bad.yaml")], None);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("unknown field"), "{}", bad.stderr);

    // A subject revocation is lifted only explicitly, once, with a reason (another subject, so the
    // secret's lease above is untouched).
    let blocked = format!("{}#repo:org/other-{}:ref:refs/heads/main", h.issuer.issuer, h.id);
    let revoked = brokerctl(&["revoke", "subject", &blocked, "--reason", "runner compromised"], None);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let no_reason = brokerctl(&["unrevoke", "subject", &blocked], None);
    assert_eq!(no_reason.code, 2);
    let lifted = brokerctl(&["unrevoke", "subject", &blocked, "--reason", "runner rebuilt"], None);
    assert_eq!(lifted.code, 0, "{}", lifted.stderr);
    assert!(lifted.stdout.contains("may exchange again"), "{}", lifted.stdout);
    let again = brokerctl(&["unrevoke", "subject", &blocked, "--reason", "twice"], None);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("is not revoked"), "{}", again.stderr);
    let malformed = brokerctl(&["unrevoke", "subject", "no-issuer", "--reason", "x"], None);
    assert_eq!(malformed.code, 2);

    // Revoke the secret everywhere.
    let revoked = brokerctl(&["revoke", "secret", &secret, "--reason", "suspected leak"], None);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let outcome = fanout.drain().await;
    assert_eq!(outcome.failures_reported, 0);
    assert_eq!(ci.received().len(), 1);
    let after = brokerctl(&["inventory", &secret, "--output", "json"], None);
    assert_eq!(after.code, 3, "the broken destination is unconfirmed: {}", after.stdout);
    let doc = after.json();
    assert_eq!(doc["secrets"][0]["active_leases"], serde_json::json!([]));
    assert_eq!(doc["secrets"][0]["enabled"], false);
    assert_eq!(doc["unconfirmed"].as_array().unwrap().len(), 1);
    assert!(
        doc["unconfirmed"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("broken-{}", h.id))
    );

    // The audit trail tells what happened, and verifies...
    let audit = brokerctl(&["audit", "--secret", &secret, "--output", "json"], None);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let events = audit.json();
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"suspected leak"), "{reasons:?}");
    let verify = brokerctl(&["audit", "verify"], None);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(verify.stdout.contains("every chain verifies"));

    // ...until an event is edited directly in DynamoDB.
    let victim = h
        .scan(
            &h.config.audit_table,
            "reason = :r AND target = :t",
            &[(":r", "suspected leak"), (":t", &format!("secret:{secret}"))],
        )
        .await
        .into_iter()
        .next()
        .unwrap();
    h.dynamo
        .update_item()
        .table_name(&h.config.audit_table)
        .key("chain", victim["chain"].clone())
        .key("seq", victim["seq"].clone())
        .update_expression("SET reason = :r")
        .expression_attribute_values(":r", AttributeValue::S("routine".into()))
        .send()
        .await
        .unwrap();
    let tampered = brokerctl(&["audit", "verify"], None);
    assert_eq!(tampered.code, 5, "{}", tampered.stdout);
    assert!(tampered.stdout.contains("was edited"), "{}", tampered.stdout);
    // Restore it, then delete an event in the middle of a chain: that is detected too.
    h.dynamo
        .update_item()
        .table_name(&h.config.audit_table)
        .key("chain", victim["chain"].clone())
        .key("seq", victim["seq"].clone())
        .update_expression("SET reason = :r")
        .expression_attribute_values(":r", AttributeValue::S("suspected leak".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(brokerctl(&["audit", "verify"], None).code, 0);
    let chain_events = h
        .scan(
            &h.config.audit_table,
            "chain = :c",
            &[(":c", victim["chain"].as_s().unwrap())],
        )
        .await;
    let middle = chain_events
        .iter()
        .find(|e| e["seq"].as_n().unwrap() == "0")
        .filter(|_| chain_events.len() > 1)
        .cloned();
    if let Some(first) = middle {
        h.dynamo
            .delete_item()
            .table_name(&h.config.audit_table)
            .key("chain", first["chain"].clone())
            .key("seq", first["seq"].clone())
            .send()
            .await
            .unwrap();
        let deleted = brokerctl(&["audit", "verify"], None);
        assert_eq!(deleted.code, 5, "{}", deleted.stdout);
        assert!(deleted.stdout.contains("missing"), "{}", deleted.stdout);
        // Put it back so later verifications of the shared table pass.
        h.dynamo
            .put_item()
            .table_name(&h.config.audit_table)
            .set_item(Some(first))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(brokerctl(&["audit", "verify"], None).code, 0);
    tampering_without_the_audit_key_is_detected(&h, &victim).await;
    assert_eq!(brokerctl(&["audit", "verify"], None).code, 0);
    digests_detect_truncation_after_they_cover_it(&h, &fanout).await;
    assert_eq!(brokerctl(&["audit", "verify"], None).code, 0);
    logs.assert_free_of(&[value]);
}

/// What someone who can write the audit table but not use the audit key can do: forge a whole
/// chain (hashes and signatures right, certified by a key of their own), append to a real chain,
/// add an attribute. `audit verify` exits 5 naming each; the trail verifies once they are undone.
async fn tampering_without_the_audit_key_is_detected(h: &Harness, victim: &nhi_broker::aws::dynamo::Item) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use nhi_broker::audit::{GENESIS_HASH, chain_statement, link_hash};
    use nhi_broker::domain::{AuditAction, AuditEvent, AuditOutcome};
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let forger = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let sign = |message: &[u8]| b64(forger.sign(&rng, message).unwrap().as_ref());
    let put = |item: nhi_broker::aws::dynamo::Item| {
        h.dynamo
            .put_item()
            .table_name(&h.config.audit_table)
            .set_item(Some(item))
            .send()
    };
    let remove = |chain: AttributeValue, seq: AttributeValue| {
        h.dynamo
            .delete_item()
            .table_name(&h.config.audit_table)
            .key("chain", chain)
            .key("seq", seq)
            .send()
    };
    let event = AuditEvent {
        actor_subject: Some("operator:alice".into()),
        target: Some("secret:payroll".into()),
        reason: Some("routine".into()),
        ..AuditEvent::new(AuditAction::Unrevoke, AuditOutcome::Lifted, now())
    };
    let s = |v: &str| AttributeValue::S(v.into());

    // 1. A forged chain: consistent in itself, certified by the forger's own key.
    let chain = uuid::Uuid::now_v7().to_string();
    let hash = link_hash(&chain, 0, GENESIS_HASH, &event);
    let public_key = b64(forger.public_key().as_ref());
    let forged = nhi_broker::aws::dynamo::to_item(
        &event,
        [
            ("chain", s(&chain)),
            ("seq", AttributeValue::N("0".into())),
            ("prev_hash", s(GENESIS_HASH)),
            ("hash", s(&hash)),
            ("sig", s(&sign(hash.as_bytes()))),
            ("chain_key", s(&public_key)),
            ("chain_cert", s(&sign(&chain_statement(&chain, &public_key)))),
            (
                "chain_cert_key",
                s(std::env::var("NHI_AUDIT_KEY_ID").as_deref().unwrap_or_default()),
            ),
        ],
    )
    .unwrap();
    put(forged).await.unwrap();
    let run = brokerctl(&["audit", "verify"], None);
    assert_eq!(run.code, 5, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "chain {chain}: its certificate does not verify with audit key"
        )),
        "{}",
        run.stdout
    );
    remove(s(&chain), AttributeValue::N("0".into())).await.unwrap();

    // 2. An event appended to a real chain, hashed and linked correctly, signed by another key.
    let real_chain = victim["chain"].as_s().unwrap().clone();
    let tail = h
        .scan(&h.config.audit_table, "chain = :c", &[(":c", &real_chain)])
        .await
        .into_iter()
        .max_by_key(|i| i["seq"].as_n().unwrap().parse::<i64>().unwrap())
        .unwrap();
    let next_seq = tail["seq"].as_n().unwrap().parse::<i64>().unwrap() + 1;
    let prev = tail["hash"].as_s().unwrap();
    let hash = link_hash(&real_chain, next_seq, prev, &event);
    let appended = nhi_broker::aws::dynamo::to_item(
        &event,
        [
            ("chain", s(&real_chain)),
            ("seq", AttributeValue::N(next_seq.to_string())),
            ("prev_hash", s(prev)),
            ("hash", s(&hash)),
            ("sig", s(&sign(hash.as_bytes()))),
        ],
    )
    .unwrap();
    put(appended).await.unwrap();
    let run = brokerctl(&["audit", "verify"], None);
    assert_eq!(run.code, 5, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "chain {real_chain}: event {} (seq {next_seq}) is not signed by its chain's key",
            event.event_id
        )),
        "{}",
        run.stdout
    );
    remove(s(&real_chain), AttributeValue::N(next_seq.to_string()))
        .await
        .unwrap();

    // 3. An attribute added to a real event (the hash covers only the event's fields).
    h.dynamo
        .update_item()
        .table_name(&h.config.audit_table)
        .key("chain", victim["chain"].clone())
        .key("seq", victim["seq"].clone())
        .update_expression("SET approved_by = :a")
        .expression_attribute_values(":a", s("mallory"))
        .send()
        .await
        .unwrap();
    let run = brokerctl(&["audit", "verify"], None);
    assert_eq!(run.code, 5, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("carries approved_by that no audit event has (added)"),
        "{}",
        run.stdout
    );
    h.dynamo
        .update_item()
        .table_name(&h.config.audit_table)
        .key("chain", victim["chain"].clone())
        .key("seq", victim["seq"].clone())
        .update_expression("REMOVE approved_by")
        .send()
        .await
        .unwrap();

    // Without the audit key there is nothing to verify against: a usage error, not a pass.
    let run = brokerctl_with(&["audit", "verify"], None, &[("NHI_AUDIT_KEY_ID", "")]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
}

/// A digest (written by the sweeper's run) records every chain's head: deleting a chain's newest
/// event, or a whole chain, after that is detected, and so is an edited or forged digest.
async fn digests_detect_truncation_after_they_cover_it(h: &Harness, fanout: &Fanout) {
    use nhi_broker::aws::dynamo::digest::{DIGEST_CHAIN, Head, SETTLE};
    // Two releases through one API: one chain with two events.
    for _ in 0..2 {
        let (status, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
        assert_eq!(status, 200, "{body}");
    }
    // A run a little later than now, so that this test's events are inside its window.
    fanout.set_clock(now() + SETTLE + 60);
    let report = fanout.sweeper.run().await.unwrap();
    let seq = report.digest_seq.expect("the sweep wrote a digest");
    assert!(report.digest_heads > 0, "{report:?}");
    let run = brokerctl(&["audit", "verify"], None);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("digest(s): every chain verifies"), "{}", run.stdout);

    let digests = nhi_broker::aws::dynamo::DynamoAuditDigests::new(h.dynamo.clone(), &h.config.audit_table);
    let digest = digests.latest().await.unwrap().unwrap();
    assert_eq!(digest.seq, seq);
    let key = |chain: &str, seq: i64| (AttributeValue::S(chain.to_string()), AttributeValue::N(seq.to_string()));
    let get = |head: &Head| {
        let (chain, seq) = key(&head.chain, head.seq);
        h.dynamo
            .get_item()
            .table_name(&h.config.audit_table)
            .key("chain", chain)
            .key("seq", seq)
            .send()
    };
    let delete = |head: &Head| {
        let (chain, seq) = key(&head.chain, head.seq);
        h.dynamo
            .delete_item()
            .table_name(&h.config.audit_table)
            .key("chain", chain)
            .key("seq", seq)
            .send()
    };
    let put = |item: nhi_broker::aws::dynamo::Item| {
        h.dynamo
            .put_item()
            .table_name(&h.config.audit_table)
            .set_item(Some(item))
            .send()
    };
    // The newest event of a longer chain, then a whole one-event chain.
    for (head, expected) in [
        (
            digest
                .heads
                .iter()
                .find(|hd| hd.seq >= 1)
                .unwrap_or_else(|| panic!("a chain with two events: {:?}\n{}", digest.heads, run.stdout)),
            "which is missing (events deleted after the digest)",
        ),
        (
            digest.heads.iter().find(|hd| hd.seq == 0).expect("a one-event chain"),
            "the whole chain is gone (deleted)",
        ),
    ] {
        let item = get(head).await.unwrap().item.expect("the head event");
        delete(head).await.unwrap();
        let run = brokerctl(&["audit", "verify"], None);
        assert_eq!(run.code, 5, "{}", run.stdout);
        assert!(
            run.stdout
                .contains(&format!("chain {}: digest {seq} recorded", head.chain))
                && run.stdout.contains(expected),
            "{}",
            run.stdout
        );
        put(item).await.unwrap();
    }

    // An edited digest (one head moved back, as if to hide later events).
    let (chain, digest_seq) = key(DIGEST_CHAIN, seq);
    let stored = h
        .dynamo
        .get_item()
        .table_name(&h.config.audit_table)
        .key("chain", chain)
        .key("seq", digest_seq)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let mut heads = digest.heads.clone();
    heads.iter_mut().find(|hd| hd.seq >= 1).unwrap().seq -= 1;
    let mut edited = stored.clone();
    edited.insert(
        "digest_heads".into(),
        AttributeValue::S(serde_json::to_string(&heads).unwrap()),
    );
    put(edited).await.unwrap();
    let run = brokerctl(&["audit", "verify"], None);
    assert_eq!(run.code, 5, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("digest {seq} was edited")),
        "{}",
        run.stdout
    );
    put(stored).await.unwrap();
}

/// `brokerctl audit` reads the audit indexes, never a Scan: one subject's events come back by
/// subject, grant and target, in time order, page by page without a gap or a repeat, as JSON
/// Lines; reading them costs about as many items as they are. An index key edited to hide an
/// event from queries is caught by `audit verify`.
#[tokio::test(flavor = "current_thread")]
async fn audit_queries_read_indexes_page_by_page() {
    use common::brokerctl_async;
    use nhi_tests::faults::FaultProxy;
    // It edits an index key while the other test expects the trail to verify.
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let started = now();
    for _ in 0..7 {
        let (status, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = h
        .post_token(&h.form(&h.token(&h.claims()), "https://no-grant.test"))
        .await;
    assert_eq!(status, 400);
    let proxy = FaultProxy::start().await;
    let env = [("AWS_ENDPOINT_URL", proxy.url.as_str())];
    let lines = |stdout: &str| -> Vec<serde_json::Value> {
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let next_token = |stderr: &str| {
        stderr
            .split("--next-token ")
            .nth(1)
            .map(|t| t.split_whitespace().next().unwrap().to_string())
    };

    // By subject, 3 at a time: 8 events (7 releases, 1 denial), oldest first, each once.
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut token: Option<String> = None;
    for page in 0.. {
        assert!(page < 5, "pagination does not end");
        let mut args = vec!["audit", "--subject", &h.subject, "--limit", "3", "-o", "jsonl"];
        if let Some(t) = &token {
            args.extend(["--next-token", t]);
        }
        let run = brokerctl_async(&args, &env).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let events = lines(&run.stdout);
        assert!(events.len() <= 3);
        seen.extend(events);
        token = next_token(&run.stderr);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 8, "{seen:#?}");
    let ids: std::collections::BTreeSet<&str> = seen.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 8, "no event twice");
    let order: Vec<(i64, &str)> = seen
        .iter()
        .map(|e| (e["at"].as_i64().unwrap(), e["event_id"].as_str().unwrap()))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "time order: {order:?}");
    assert!(seen.iter().all(|e| e["actor_subject"] == h.subject.as_str()));
    let operations: Vec<String> = proxy.seen().into_iter().map(|s| s.operation).collect();
    assert!(
        !operations.is_empty() && operations.iter().all(|o| o == "Query"),
        "{operations:?}"
    );

    // By grant and by target: the 7 releases; what was read is what was returned.
    for args in [
        vec!["audit", "--grant", h.grant_id.as_str(), "-o", "jsonl"],
        vec!["audit", "--target", h.target.as_str(), "-o", "jsonl"],
    ] {
        let run = brokerctl_async(&args, &env).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(lines(&run.stdout).len(), 7, "{args:?}: {}", run.stdout);
        assert!(run.stderr.contains("7 event(s); 7 item(s) read"), "{}", run.stderr);
        assert!(next_token(&run.stderr).is_none());
    }
    // Conditions combine (the subject's index, filtered by target), and windows bound them.
    let since = started.to_string();
    let combined = brokerctl(
        &[
            "audit",
            "--subject",
            &h.subject,
            "--target",
            "https://no-grant.test",
            "--since",
            &since,
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(combined.code, 0, "{}", combined.stderr);
    assert_eq!(combined.json()["events"].as_array().unwrap().len(), 1);
    let future = (now() + 3600).to_string();
    let later = brokerctl(
        &["audit", "--subject", &h.subject, "--since", &future, "-o", "json"],
        None,
    );
    assert_eq!(later.json()["events"].as_array().unwrap().len(), 0, "{}", later.stdout);
    // By time alone (the by-time index; other tests' events are there too).
    let recent = brokerctl(&["audit", "--since", &since, "--limit", "1000", "-o", "jsonl"], None);
    assert_eq!(recent.code, 0, "{}", recent.stderr);
    let recent = lines(&recent.stdout);
    assert!(
        seen.iter().all(|e| recent.contains(e)),
        "the subject's events are in the window"
    );

    // Bad input is a usage error.
    for args in [
        vec!["audit", "--limit", "0"],
        vec!["audit", "--next-token", "forged"],
        vec!["audit", "--since", "2020-01-01T00:00:00Z"],
        vec![
            "audit",
            "--since",
            "2026-02-01T00:00:00Z",
            "--until",
            "2026-01-01T00:00:00Z",
        ],
    ] {
        let run = brokerctl(&args, None);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
    }

    // An index key edited to hide an event from queries: verify names it.
    let victim = h
        .scan(
            &h.config.audit_table,
            "actor_subject = :s",
            &[(":s", h.subject.as_str())],
        )
        .await
        .into_iter()
        .next()
        .unwrap();
    let key = victim["subject_key"].clone();
    let set_key = |value: AttributeValue| {
        h.dynamo
            .update_item()
            .table_name(&h.config.audit_table)
            .key("chain", victim["chain"].clone())
            .key("seq", victim["seq"].clone())
            .update_expression("SET subject_key = :k")
            .expression_attribute_values(":k", value)
            .send()
    };
    set_key(AttributeValue::S("elsewhere#0".into())).await.unwrap();
    let hidden = brokerctl(
        &["audit", "--subject", &h.subject, "--limit", "1000", "-o", "jsonl"],
        None,
    );
    assert_eq!(lines(&hidden.stdout).len(), 7);
    let verify = brokerctl(&["audit", "verify"], None);
    assert_eq!(verify.code, 5, "{}", verify.stdout);
    assert!(
        verify.stdout.contains(&format!(
            "event {} (seq {}) has index attributes that do not match it: subject_key",
            victim["event_id"].as_s().unwrap(),
            victim["seq"].as_n().unwrap()
        )),
        "{}",
        verify.stdout
    );
    set_key(key).await.unwrap();
}

/// Issue 17's measurement (run alone: `bash infra/local/stack.sh test --test cli_moto
/// audit_queries_at_scale -- --ignored --nocapture`): 100,000 events (1,000 subjects x 100, from
/// 64 writer chains over 30 days) in a copy of the audit table; one subject's 100 events by
/// `brokerctl audit --subject`, against what a Scan of the table reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: seeds 100,000 events into moto (minutes)"]
async fn audit_queries_at_scale() {
    use nhi_broker::aws::dynamo::{index_attributes, to_item};
    use nhi_broker::domain::{AuditAction, AuditEvent, AuditOutcome};
    let h = Harness::new().await;
    let table = format!("audit-scale-{}", h.id);
    copy_of_the_audit_table(&h, &table).await;

    let (subjects, per_subject, chains) = (1_000usize, 100usize, 64usize);
    let start = now() - 30 * 86_400;
    let seeding = std::time::Instant::now();
    let mut batch = Vec::new();
    let mut seq = vec![0i64; chains];
    for i in 0..subjects * per_subject {
        let (subject, chain) = (i % subjects, (i / 7) % chains);
        let at = start + (i as i64 * 30 * 86_400) / (subjects * per_subject) as i64;
        let event = AuditEvent {
            actor_subject: Some(format!("repo:org/app-{subject}:ref:refs/heads/main")),
            target: Some(format!("secret:db-{}", subject % 50)),
            grant_id: Some(format!("grant-{}", subject % 200)),
            ..AuditEvent::new(AuditAction::TokenExchange, AuditOutcome::Released, at)
        };
        let chain_id = format!("scale-chain-{chain}");
        let mut attributes = index_attributes(&event, &chain_id);
        attributes.push(("chain", AttributeValue::S(chain_id)));
        attributes.push(("seq", AttributeValue::N(seq[chain].to_string())));
        seq[chain] += 1;
        let item = to_item(&event, attributes).unwrap();
        batch.push(
            aws_sdk_dynamodb::types::WriteRequest::builder()
                .put_request(
                    aws_sdk_dynamodb::types::PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .unwrap(),
                )
                .build(),
        );
        if batch.len() == 25 {
            let mut pending = std::mem::take(&mut batch);
            while !pending.is_empty() {
                let out = h
                    .dynamo
                    .batch_write_item()
                    .request_items(&table, pending)
                    .send()
                    .await
                    .unwrap();
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&table))
                    .unwrap_or_default();
            }
        }
    }
    let seeded = seeding.elapsed();

    let subject = "repo:org/app-421:ref:refs/heads/main";
    let env = [("NHI_AUDIT_TABLE", table.as_str())];
    let query = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let run = brokerctl_with(&args, None, &env);
        (run, started.elapsed())
    };
    let (run, took) = query(vec![
        "audit".into(),
        "--subject".into(),
        subject.into(),
        "--limit".into(),
        "1000".into(),
        "-o".into(),
        "jsonl".into(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), per_subject);
    let cost = run.stderr.lines().last().unwrap_or_default().to_string();
    let read: usize = cost
        .split("; ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(read <= 2 * per_subject, "{cost}");
    let (day, day_took) = query(vec![
        "audit".into(),
        "--since".into(),
        (start + 10 * 86_400).to_string(),
        "--until".into(),
        (start + 11 * 86_400).to_string(),
        "--limit".into(),
        "100".into(),
        "-o".into(),
        "jsonl".into(),
    ]);
    assert_eq!(day.code, 0, "{}", day.stderr);

    let scanning = std::time::Instant::now();
    let (mut scanned, mut pages) = (0, 0);
    let mut scan = h.dynamo.scan().table_name(&table).into_paginator().send();
    while let Some(page) = scan.next().await {
        let page = page.unwrap();
        scanned += page.scanned_count() as usize;
        pages += 1;
    }
    let scan_took = scanning.elapsed();
    println!(
        "seeded {} events in {:.0} s\n\
         by subject (100 events): {cost}; brokerctl wall {} ms\n\
         one day by time, first page: {}; brokerctl wall {} ms\n\
         a Scan of the table: {scanned} items in {pages} pages, {} ms",
        subjects * per_subject,
        seeded.as_secs_f64(),
        took.as_millis(),
        day.stderr.lines().last().unwrap_or_default(),
        day_took.as_millis(),
        scan_took.as_millis()
    );
    h.dynamo.delete_table().table_name(&table).send().await.unwrap();
}

/// The append-only copy (issue 17 item 3): audit-export writes every audit write from the table's
/// stream to the locked bucket, digests beside events, and `audit verify --export` compares: an
/// export object hidden (a delete marker) or an event deleted from the table, even one no digest
/// covers yet, exits 5 naming it; the stream also records the deletion itself.
#[tokio::test(flavor = "current_thread")]
async fn the_export_keeps_what_the_table_loses_and_verify_compares_them() {
    use nhi_broker::aws::dynamo::digest::SETTLE;
    use nhi_local::stream::{StartingPosition, StreamPoller};
    // Its deletions would break the other tests' verifications.
    let _one_at_a_time = exclusive().await;
    // Its own audit table and bucket: the stack's stream holds every earlier test's tampering,
    // which the export faithfully records.
    let mut h = Harness::new().await;
    let table = format!("audit-export-{}", h.id);
    copy_of_the_audit_table(&h, &table).await;
    let mut config = h.config.clone();
    config.audit_table = table.clone();
    h.use_config(config).await;
    let fanout = Fanout::new(&h).await;
    let sdk = nhi_broker::aws::sdk_config().await;
    let s3 = nhi_broker::aws::s3::client(&sdk);
    let bucket = format!("audit-export-{}", h.id);
    s3.create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    s3.put_object_lock_configuration()
        .bucket(&bucket)
        .object_lock_configuration(
            aws_sdk_s3::types::ObjectLockConfiguration::builder()
                .object_lock_enabled(aws_sdk_s3::types::ObjectLockEnabled::Enabled)
                .rule(
                    aws_sdk_s3::types::ObjectLockRule::builder()
                        .default_retention(
                            aws_sdk_s3::types::DefaultRetention::builder()
                                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Governance)
                                .days(1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let exporter = nhi_broker::wiring::export_service(&sdk, &bucket);
    let mut poller = StreamPoller::new(
        &std::env::var("AWS_ENDPOINT_URL").unwrap(),
        &std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        &table,
        StartingPosition::TrimHorizon,
    )
    .await
    .unwrap();
    poller.batch_size = 1000;
    let env = [
        ("NHI_AUDIT_TABLE", table.as_str()),
        ("NHI_EXPORT_BUCKET", bucket.as_str()),
    ];
    let brokerctl = |args: &[&str]| brokerctl_with(args, None, &env);
    let mut export = async || {
        let outcome = poller
            .poll_once(|event| {
                let exporter = &exporter;
                async move {
                    nhi_broker::jobs::handle_export_event(exporter, event)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await
            .unwrap();
        assert!(outcome.dead_lettered.is_empty(), "{outcome:?}");
    };
    let verify = || brokerctl(&["audit", "verify", "--export", "--export-grace", "0"]);

    // Two releases (one chain), a digest, everything exported: the table and its copy agree.
    for _ in 0..2 {
        let (status, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
        assert_eq!(status, 200, "{body}");
    }
    fanout.set_clock(now() + SETTLE + 60);
    fanout.sweeper.run().await.unwrap().digest_seq.expect("a digest");
    export().await;
    let run = verify();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("every chain verifies"), "{}", run.stdout);
    let objects: Vec<String> = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("audit/v1/")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect();
    assert!(
        objects.iter().any(|k| k.starts_with("audit/v1/digests/dt=")),
        "{objects:?}"
    );
    // Without its grace period, a fresh event not exported yet is only pending.
    let (status, _) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
    assert_eq!(status, 200);
    let pending = brokerctl(&["audit", "verify", "--export", "-o", "json"]);
    assert_eq!(pending.code, 0, "{}", pending.stdout);
    assert!(
        pending.json()["export"]["pending"].as_u64() >= Some(1),
        "{}",
        pending.stdout
    );
    export().await;

    // This test's chain: the newest audit item whose subject is this harness's.
    let mine = h
        .scan(
            &h.config.audit_table,
            "actor_subject = :s",
            &[(":s", h.subject.as_str())],
        )
        .await;
    let newest = mine
        .iter()
        .max_by_key(|i| i["seq"].as_n().unwrap().parse::<i64>().unwrap())
        .unwrap()
        .clone();
    let (chain, seq) = (
        newest["chain"].as_s().unwrap().clone(),
        newest["seq"].as_n().unwrap().clone(),
    );

    // 1. An export object hidden by a delete marker (the locked version stays; a reader of the
    //    bucket no longer sees it).
    let listing = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("audit/v1/events/")
        .send()
        .await
        .unwrap();
    let mut holding = None;
    for object in listing.contents() {
        let key = object.key().unwrap();
        let body = s3.get_object().bucket(&bucket).key(key).send().await.unwrap();
        let text = String::from_utf8(body.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
        if text.contains(&format!("\"chain\":\"{chain}\"")) && text.contains(&format!("\"seq\":{seq},")) {
            holding = Some(key.to_string());
        }
    }
    let holding = holding.expect("the export holds the chain's newest event");
    let marker = s3.delete_object().bucket(&bucket).key(&holding).send().await.unwrap();
    let run = verify();
    assert_eq!(run.code, 5, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "chain {chain}: seq {seq} is not in the export (an export object was deleted"
        )),
        "{}",
        run.stdout
    );
    s3.delete_object()
        .bucket(&bucket)
        .key(&holding)
        .version_id(marker.version_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(verify().code, 0);

    // 2. The chain's newest event deleted from the table before any digest covers it: the
    //    export still has it, and the stream recorded the deletion.
    h.dynamo
        .delete_item()
        .table_name(&h.config.audit_table)
        .key("chain", newest["chain"].clone())
        .key("seq", newest["seq"].clone())
        .send()
        .await
        .unwrap();
    let run = verify();
    assert_eq!(run.code, 5, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "chain {chain}: seq {seq} is in the export ({holding}) but not in the table (deleted)"
        )),
        "{}",
        run.stdout
    );
    export().await;
    let run = verify();
    assert!(
        run.stdout.contains(&format!(
            "chain {chain}: seq {seq} was removed from the table (recorded in audit/v1/events/"
        )),
        "{}",
        run.stdout
    );
    // Put back, the table verifies again; the export keeps the record of the deletion.
    h.dynamo
        .put_item()
        .table_name(&h.config.audit_table)
        .set_item(Some(newest.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(brokerctl(&["audit", "verify"]).code, 0);
    h.dynamo.delete_table().table_name(&table).send().await.unwrap();
}

/// A new, empty audit table with the same keys, indexes and stream as the stack's.
async fn copy_of_the_audit_table(h: &Harness, name: &str) {
    let source = h
        .dynamo
        .describe_table()
        .table_name(&h.config.audit_table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let indexes = source
        .global_secondary_indexes()
        .iter()
        .map(|g| {
            aws_sdk_dynamodb::types::GlobalSecondaryIndex::builder()
                .index_name(g.index_name().unwrap())
                .set_key_schema(g.key_schema.clone())
                .set_projection(g.projection.clone())
                .build()
                .unwrap()
        })
        .collect();
    h.dynamo
        .create_table()
        .table_name(name)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .set_attribute_definitions(source.attribute_definitions.clone())
        .set_key_schema(source.key_schema.clone())
        .set_global_secondary_indexes(Some(indexes))
        .set_stream_specification(source.stream_specification.clone())
        .send()
        .await
        .unwrap();
}
