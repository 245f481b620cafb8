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
    let reasons: Vec<&str> = events
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
