//! brokerctl end to end against moto (run by `make test`): the real binary registers, applies,
//! revokes, inventories and verifies the audit trail; a workload exchanges through the real API
//! and revoke-fanout runs from the real stream.

use aws_sdk_dynamodb::types::AttributeValue;
use nhi_tests::fanout::{Fanout, Receiver, exclusive};
use nhi_tests::{Harness, LogCapture};

mod common;

use common::brokerctl;

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
    logs.assert_free_of(&[value]);
}
