//! Operators cannot break what they operate: the real brokerctl binary against moto, driven the
//! way a busy operator would (typos, empty inputs, duplicates, dangling references, a failure in
//! the middle of a change), and the commands that resolve exposure and tell the truth about
//! rotation.

mod common;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, Projection, ProjectionType,
};
use common::{Run, brokerctl, brokerctl_async, brokerctl_with};
use nhi_broker::aws::dynamo::Item;
use nhi_broker::domain::{RotationPolicy, SecretGenerator, TOKEN_TYPE_SECRET};
use nhi_tests::fanout::{Fanout, Receiver, exclusive};
use nhi_tests::faults::{Fault, FaultProxy};
use nhi_tests::rotation::{Rotator, random_policy, secret_with_value};
use nhi_tests::{Harness, LogCapture, attr, now};

async fn get(h: &Harness, table: &str, pk: &str, sk: &str) -> Option<Item> {
    h.dynamo
        .get_item()
        .table_name(table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk.into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

async fn secret_head(h: &Harness, id: &str) -> Option<Item> {
    get(h, &h.config.registry_table, &format!("SECRET#{id}"), "#SECRET").await
}

fn refused(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, code, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    for needle in needles {
        assert!(run.stderr.contains(needle), "{needle:?} not in: {}", run.stderr);
    }
}

fn write_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_secret_put_changes_nothing_and_omitted_flags_keep_what_is_stored() {
    let _one_at_a_time = exclusive().await;
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let secret = format!("db-{}", h.id);
    let created = brokerctl(
        &[
            "secret",
            "put",
            &secret,
            "--owner",
            "payments",
            "--environment",
            "dev",
            "--generate",
            "32",
            "--rotate-every",
            "86400",
            "--grace",
            "600",
        ],
        None,
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let before = secret_head(&h, &secret).await.unwrap();
    assert!(before.contains_key("rotation") && before.contains_key("rotation_due_at"));

    // Bad input: exit 2, the reason, and the stored secret exactly as it was.
    let missing_file = format!("/nonexistent/{}", h.id);
    let cases: [(&[&str], Option<&str>, &str); 6] = [
        (
            &["--owner", "x", "--environment", "prod", "--value-stdin"],
            Some(""),
            "the secret value is empty",
        ),
        (&["--owner", "x", "--value-file", &missing_file], None, "cannot read"),
        (&["--owner", "x", "--generate", "0"], None, "16 to 4096"),
        (&["--environment", "prod"], None, "never changes"),
        (&["--rotate-every", "5"], None, "below 60"),
        (&["--owner", ""], None, "--owner"),
    ];
    for (flags, stdin, message) in cases {
        let mut args = vec!["secret", "put", secret.as_str()];
        args.extend_from_slice(flags);
        let run = brokerctl(&args, stdin);
        assert_eq!(
            secret_head(&h, &secret).await.unwrap(),
            before,
            "{flags:?} changed the secret"
        );
        refused(&run, 2, &[message, "nothing was written"]);
    }
    // A second value is refused (values come from rotation), before anything is written.
    refused(
        &brokerctl(&["secret", "put", &secret, "--owner", "x", "--generate", "32"], None),
        1,
        &["already has a value"],
    );
    assert_eq!(secret_head(&h, &secret).await.unwrap(), before);

    // A new id never exists without a value.
    let fresh = format!("fresh-{}", h.id);
    for flags in [
        vec!["--owner", "o", "--environment", "dev", "--generate", "0"],
        vec!["--owner", "o", "--environment", "dev"],
        vec!["--environment", "dev", "--generate", "32"],
    ] {
        let mut args = vec!["secret", "put", fresh.as_str()];
        args.extend_from_slice(&flags);
        assert_eq!(brokerctl(&args, None).code, 2, "{flags:?}");
        assert!(
            secret_head(&h, &fresh).await.is_none(),
            "{flags:?} left a secret without a value"
        );
    }

    // Omitted flags keep their values.
    let owner = brokerctl(&["secret", "put", &secret, "--owner", "platform"], None);
    assert_eq!(owner.code, 0, "{}", owner.stderr);
    assert!(
        owner.stdout.contains("owner: \"payments\" -> \"platform\""),
        "{}",
        owner.stdout
    );
    let after = secret_head(&h, &secret).await.unwrap();
    assert_eq!(attr(&after, "owner"), "platform");
    for kept in [
        "rotation",
        "rotation_due_at",
        "environment",
        "current_version",
        "description",
    ] {
        assert_eq!(after.get(kept), before.get(kept), "{kept} was not kept");
    }
    let unchanged = brokerctl(&["secret", "put", &secret], None);
    assert!(unchanged.stdout.contains("unchanged"), "{}", unchanged.stdout);
    // Removing the policy is explicit.
    assert_eq!(brokerctl(&["secret", "put", &secret, "--no-rotation"], None).code, 0);
    let after = secret_head(&h, &secret).await.unwrap();
    assert!(!after.contains_key("rotation") && !after.contains_key("rotation_due_at"));

    // And the secret still decrypts: a workload gets its value.
    let mut grant = h.grant(&format!("db-readers-{}", h.id), &h.subject, now() + 3600);
    grant.targets = vec![secret.clone()];
    grant.environment = "dev".into();
    h.registry.put_grant(&grant).await.unwrap();
    let mut form = h.form(&h.token(&h.claims()), &secret);
    form.push(("requested_token_type".into(), TOKEN_TYPE_SECRET.into()));
    let (status, body) = h.post_token(&form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"].as_str().unwrap().len(), 32);
    logs.assert_free_of(&[body["access_token"].as_str().unwrap().to_string()]);
}

fn grant_yaml(id: &str, issuer: &str, subject: &str, target: &str, extra: &str) -> String {
    format!(
        r#"  - id: "{id}"
    issuer: "{issuer}"
    subject: "{subject}"
    environment: prod
    targets: ["{target}"]
    max_ttl_seconds: 600
    approval_expires_at: "2099-01-01T00:00:00Z"
    owner: payments
    justification: reconciliation
{extra}"#
    )
}

#[tokio::test(flavor = "current_thread")]
async fn apply_reports_every_problem_before_writing_and_writes_all_or_nothing() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let issuer = h.issuer.issuer.clone();

    // Unknown fields are refused everywhere, every one reported.
    let unknown = write_file(
        &format!("unknown-{}.yaml", h.id),
        &format!(
            r#"issuers:
  - {{issuer: "{issuer}", name: ci, audiences: [a], jwks: {{type: url, url: "{issuer}/jwks.json"}}, algorithms: [ES256], enabled: true, colour: red}}
targets:
  - {{id: "t-{id}", kind: jwt, environment: prod, owner: o, enabled: true, tier: 1}}
destinations:
  - {{id: "d-{id}", kind: {{type: webhook, url: "https://d.example"}}, secrets: [s], owner: o, enabled: true, retries: 3}}
policies: []
"#,
            id = h.id
        ),
    );
    refused(
        &brokerctl(&["apply", "-f", &unknown], None),
        2,
        &[
            "issuers[0]: unknown field `colour`",
            "targets[0]: unknown field `tier`",
            "destinations[0]: unknown field `retries`",
            "policies: unknown section",
        ],
    );

    // The manifest's own problems: all reported, and before any AWS call (the endpoint is dead).
    let huge = "x".repeat(10 * 1024 * 1024);
    let g = |id: &str| format!("g-{id}-{}", h.id);
    let mut text = String::from("grants:\n");
    text.push_str(&grant_yaml(&g("a"), &issuer, &h.subject, &h.target, ""));
    text.push_str(&grant_yaml(&g("a"), &issuer, &h.subject, &h.target, ""));
    text.push_str(&grant_yaml("", &issuer, &h.subject, &h.target, ""));
    text.push_str(&grant_yaml(&g("b"), &issuer, &huge, &h.target, ""));
    text.push_str(
        &grant_yaml(&g("c"), &issuer, &h.subject, &h.target, "")
            .replace("max_ttl_seconds: 600", "max_ttl_seconds: 1000000000000")
            .replace("2099-01-01T00:00:00Z", "2020-01-01T00:00:00Z"),
    );
    let local = write_file(&format!("local-{}.yaml", h.id), &text);
    let run = brokerctl_with(
        &["apply", "-f", &local],
        None,
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("NHI_AWS_MAX_ATTEMPTS", "1"),
        ],
    );
    refused(
        &run,
        2,
        &[
            "5 problem(s)",
            "grants[1].id",
            "grants[2].id",
            "grants[3].subject: is 10485760 bytes long",
            "grants[4].max_ttl_seconds",
            "grants[4].approval_expires_at",
        ],
    );

    // References: every dangling or disagreeing one, nothing written.
    let mut text = String::from("grants:\n");
    text.push_str(&grant_yaml(
        &g("d"),
        "https://nobody.example",
        &h.subject,
        &h.target,
        "",
    ));
    text.push_str(&grant_yaml(
        &g("e"),
        &issuer,
        &h.subject,
        &format!("https://nowhere-{}", h.id),
        "",
    ));
    text.push_str(&grant_yaml(
        &g("f"),
        &issuer,
        &h.subject,
        &h.staging_target,
        "    delivers_to: no-such-destination\n",
    ));
    text.push_str(&format!(
        "destinations:\n  - {{id: \"d-{id}\", kind: {{type: webhook, url: \"https://d.example\"}}, secrets: [\"missing-{id}\"], owner: o, enabled: true}}\n",
        id = h.id
    ));
    let dangling = write_file(&format!("dangling-{}.yaml", h.id), &text);
    refused(
        &brokerctl(&["apply", "-f", &dangling, "--yes"], None),
        2,
        &[
            "grants[0].issuer: no issuer",
            "grants[1].targets[0]: no target or secret",
            "grants[2].targets[0]",
            "the grant is for \"prod\"",
            "grants[2].delivers_to: no destination",
            "destinations[0].secrets[0]: no secret",
        ],
    );
    for id in ["d", "e", "f"] {
        assert!(h.registry.find("grant", &g(id)).await.unwrap().is_empty());
    }
    assert!(
        get(&h, &h.config.registry_table, &format!("DEST#d-{}", h.id), "#DEST")
            .await
            .is_none()
    );

    // A valid manifest whose one transaction fails: nothing is written, and it was one write.
    let secret = format!("s-{}", h.id);
    assert_eq!(
        brokerctl(
            &[
                "secret",
                "put",
                &secret,
                "--owner",
                "o",
                "--environment",
                "prod",
                "--generate",
                "32"
            ],
            None
        )
        .code,
        0
    );
    let mut text = String::from("grants:\n");
    text.push_str(&grant_yaml(&g("x"), &issuer, &h.subject, &h.target, ""));
    text.push_str(&grant_yaml(&g("y"), &issuer, &h.subject, &secret, ""));
    text.push_str(&format!(
        "destinations:\n  - {{id: \"d-{id}\", kind: {{type: webhook, url: \"https://d.example\"}}, secrets: [\"{secret}\"], owner: o, enabled: true}}\n",
        id = h.id
    ));
    let good = write_file(&format!("good-{}.yaml", h.id), &text);
    let proxy = FaultProxy::start().await;
    proxy.fail(
        "TransactWriteItems",
        1,
        Fault::Error {
            status: 400,
            body:
                serde_json::json!({"__type": "com.amazonaws.dynamodb.v20120810#ValidationException", "message": "boom"})
                    .to_string(),
        },
    );
    let via_proxy = [("AWS_ENDPOINT_URL", proxy.url.as_str())];
    let failed = brokerctl_async(&["apply", "-f", &good, "--yes"], &via_proxy).await;
    refused(&failed, 1, &["nothing was written"]);
    let writes: Vec<String> = proxy
        .seen()
        .into_iter()
        .map(|s| s.operation)
        .filter(|o| o.contains("Put") || o.contains("Update") || o.contains("Delete") || o.contains("Transact"))
        .collect();
    assert_eq!(writes, ["TransactWriteItems"], "one atomic write, nothing item by item");
    for id in ["x", "y"] {
        assert!(h.registry.find("grant", &g(id)).await.unwrap().is_empty());
    }

    // The response lost after the commit: the SDK's retry carries the same token, so it is one
    // application (one audit event), not a second one that fails its own conditions.
    proxy.forget();
    proxy.fail("TransactWriteItems", 1, Fault::LoseResponse);
    let applied = brokerctl_async(&["apply", "-f", &good, "--yes"], &via_proxy).await;
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert!(applied.stdout.contains("applied 3 change(s)"), "{}", applied.stdout);
    let tokens: Vec<Option<String>> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.operation == "TransactWriteItems")
        .map(|s| s.client_request_token)
        .collect();
    assert_eq!(tokens.len(), 2);
    assert!(tokens[0].is_some() && tokens[0] == tokens[1], "{tokens:?}");
    let audited = h
        .scan(
            &h.config.audit_table,
            "target = :t AND actor_subject = :a",
            &[(":t", &format!("manifest:{good}")), (":a", "operator:alice")],
        )
        .await;
    assert_eq!(audited.len(), 1, "one audit event for one apply");
    for id in ["x", "y"] {
        assert_eq!(h.registry.find("grant", &g(id)).await.unwrap().len(), 1);
    }
    let again = brokerctl(&["apply", "-f", &good], None);
    assert_eq!(again.code, 0);
    assert!(again.stdout.contains("nothing to change"), "{}", again.stdout);
}

/// A registry table of its own (same schema), so pruning sees only this test's items.
async fn private_registry(h: &Harness) -> String {
    let shared = h
        .dynamo
        .describe_table()
        .table_name(&h.config.registry_table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let name = format!("registry-{}", h.id);
    let indexes: Vec<GlobalSecondaryIndex> = shared
        .global_secondary_indexes()
        .iter()
        .map(|index| {
            GlobalSecondaryIndex::builder()
                .index_name(index.index_name().unwrap())
                .set_key_schema(Some(
                    index
                        .key_schema()
                        .iter()
                        .map(|k| {
                            KeySchemaElement::builder()
                                .attribute_name(k.attribute_name())
                                .key_type(k.key_type().clone())
                                .build()
                                .unwrap()
                        })
                        .collect(),
                ))
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .unwrap()
        })
        .collect();
    h.dynamo
        .create_table()
        .table_name(&name)
        .set_attribute_definitions(Some(
            shared
                .attribute_definitions()
                .iter()
                .map(|a| {
                    AttributeDefinition::builder()
                        .attribute_name(a.attribute_name())
                        .attribute_type(a.attribute_type().clone())
                        .build()
                        .unwrap()
                })
                .collect(),
        ))
        .set_key_schema(Some(
            shared
                .key_schema()
                .iter()
                .map(|k| {
                    KeySchemaElement::builder()
                        .attribute_name(k.attribute_name())
                        .key_type(k.key_type().clone())
                        .build()
                        .unwrap()
                })
                .collect(),
        ))
        .set_global_secondary_indexes(Some(indexes))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    name
}

#[tokio::test(flavor = "current_thread")]
async fn apply_prune_revokes_and_disables_what_the_manifest_no_longer_names_and_staged_applies_large_changes() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let registry = private_registry(&h).await;
    let env = [("NHI_REGISTRY_TABLE", registry.as_str())];
    let ctl = |args: &[&str]| brokerctl_with(args, None, &env);
    let issuer = h.issuer.issuer.clone();
    assert_eq!(
        ctl(&[
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
            "ES256"
        ])
        .code,
        0
    );
    assert_eq!(
        ctl(&[
            "target",
            "put",
            "--id",
            &h.target,
            "--kind",
            "jwt",
            "--environment",
            "prod",
            "--owner",
            "o"
        ])
        .code,
        0
    );
    let secret = format!("s-{}", h.id);
    assert_eq!(
        ctl(&[
            "secret",
            "put",
            &secret,
            "--owner",
            "o",
            "--environment",
            "prod",
            "--generate",
            "32"
        ])
        .code,
        0
    );
    let destination = |id: &str| {
        format!(
            "  - {{id: \"{id}\", kind: {{type: webhook, url: \"https://{id}.example\"}}, secrets: [\"{secret}\"], owner: o, enabled: true}}\n"
        )
    };
    let mut full = String::from("grants:\n");
    full.push_str(&grant_yaml("keep", &issuer, &h.subject, &h.target, ""));
    full.push_str(&grant_yaml("drop", &issuer, &h.subject, &h.target, ""));
    full.push_str("destinations:\n");
    full.push_str(&destination("keep-dest"));
    full.push_str(&destination("drop-dest"));
    let full_path = write_file(&format!("full-{}.yaml", h.id), &full);
    assert_eq!(ctl(&["apply", "-f", &full_path, "--yes"]).code, 0);

    let mut smaller = String::from("grants:\n");
    smaller.push_str(&grant_yaml("keep", &issuer, &h.subject, &h.target, ""));
    smaller.push_str("destinations:\n");
    smaller.push_str(&destination("keep-dest"));
    let smaller_path = write_file(&format!("smaller-{}.yaml", h.id), &smaller);

    // Without --prune: in sync, with warnings for what the manifest no longer names.
    let plain = ctl(&["apply", "-f", &smaller_path]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(
        plain
            .stdout
            .contains("! grant drop is not in the manifest (apply --prune would revoke it)"),
        "{}",
        plain.stdout
    );
    assert!(
        plain.stdout.contains("! destination drop-dest is not in the manifest"),
        "{}",
        plain.stdout
    );
    // With --prune: shown in the diff first (a dry run exits 4)...
    let plan = ctl(&["apply", "-f", &smaller_path, "--prune"]);
    assert_eq!(plan.code, 4, "{}", plan.stderr);
    assert!(
        plan.stdout.contains("- grant drop (revoke: not in the manifest)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("- destination drop-dest (disable: not in the manifest)"),
        "{}",
        plan.stdout
    );
    let (hr, table) = (&h, registry.as_str());
    let grant_item = |id: &str| {
        let (pk, sk) = (format!("ISSUER#{issuer}"), format!("GRANT#{id}"));
        async move { get(hr, table, &pk, &sk).await }
    };
    assert_eq!(attr(&grant_item("drop").await.unwrap(), "status"), "active");
    // ...then written: revoked (never deleted), disabled, and a revocation record for fanout.
    let pruned = ctl(&["apply", "-f", &smaller_path, "--prune", "--yes"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    let dropped = grant_item("drop").await.expect("a pruned grant is kept, revoked");
    assert_eq!(attr(&dropped, "status"), "revoked");
    assert!(!dropped.contains_key("approval_shard"));
    assert_eq!(attr(&grant_item("keep").await.unwrap(), "status"), "active");
    let dest = get(&h, &registry, "DEST#drop-dest", "#DEST").await.unwrap();
    assert_eq!(dest.get("enabled").and_then(|v| v.as_bool().ok()), Some(&false));
    let records = h
        .scan(
            &h.config.revocations_table,
            "target_id = :g AND target_kind = :k AND actor = :a",
            &[(":g", "drop"), (":k", "grant"), (":a", "operator:alice")],
        )
        .await;
    assert_eq!(records.len(), 1, "revoke-fanout sweeps the pruned grant's leases");
    let settled = ctl(&["apply", "-f", &smaller_path, "--prune"]);
    assert_eq!(settled.code, 0);
    assert!(settled.stdout.contains("nothing to change"), "{}", settled.stdout);
    // A pruned grant is never revived by a manifest naming it again.
    refused(
        &ctl(&["apply", "-f", &full_path, "--yes"]),
        2,
        &["grants[1].id", "never revived"],
    );

    // More than one transaction holds: refused unless staged, then written in dependency order.
    let mut many = String::from("grants:\n");
    for i in 0..120 {
        many.push_str(&grant_yaml(&format!("bulk-{i}"), &issuer, &h.subject, &h.target, ""));
    }
    let many_path = write_file(&format!("many-{}.yaml", h.id), &many);
    refused(&ctl(&["apply", "-f", &many_path, "--yes"]), 2, &["--staged"]);
    assert!(grant_item("bulk-0").await.is_none());
    let staged = ctl(&["apply", "-f", &many_path, "--yes", "--staged"]);
    assert_eq!(staged.code, 0, "{}", staged.stderr);
    assert!(
        staged.stdout.contains("applied 120 change(s) in 2 staged transactions"),
        "{}",
        staged.stdout
    );
    assert!(grant_item("bulk-119").await.is_some());
}

#[tokio::test(flavor = "current_thread")]
async fn rotate_refuses_what_it_cannot_rotate_and_waits_for_the_truth() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let fixed = format!("fixed-{}", h.id);
    assert_eq!(
        brokerctl(
            &[
                "secret",
                "put",
                &fixed,
                "--owner",
                "o",
                "--environment",
                "prod",
                "--generate",
                "32"
            ],
            None
        )
        .code,
        0
    );
    let run = brokerctl(&["rotate", &fixed], None);
    refused(&run, 1, &["no rotation policy", "nothing was requested"]);
    assert!(!run.stdout.contains("requested"));

    // Rotated while brokerctl waits (rotate runs the on-demand request it put on the bus).
    let rotating = secret_with_value(&h, "rotating", random_policy(), "first-value").await;
    let rotator = Rotator::for_secrets(&h, now()).await;
    let (waited, outcome) = tokio::join!(
        brokerctl_async(&["rotate", &rotating, "--wait", "--timeout", "60"], &[]),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            rotator.service.rotate_on_demand(&rotating).await
        }
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(waited.code, 0, "{}", waited.stderr);
    assert!(
        waited.stdout.contains(&format!("secret {rotating} rotated: v1 -> v-")),
        "{}",
        waited.stdout
    );

    // A rotation that fails is reported as a failure (exit 1), not "requested".
    let hook = RotationPolicy {
        generator: SecretGenerator::Hook {
            url: "http://127.0.0.1:9/rotate".into(),
        },
        ..random_policy()
    };
    let broken = secret_with_value(&h, "broken-hook", hook, "first-value").await;
    rotator.set_clock(now() + 5);
    let (waited, outcome) = tokio::join!(
        brokerctl_async(&["rotate", &broken, "--wait", "--timeout", "60"], &[]),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            rotator.service.rotate_on_demand(&broken).await
        }
    );
    assert!(outcome.is_err(), "{outcome:?}");
    refused(&waited, 1, &[&format!("rotation of {broken} failed"), "still v1"]);

    // Nothing happens in time: exit 6, and it says so.
    let idle = secret_with_value(&h, "idle", random_policy(), "first-value").await;
    refused(
        &brokerctl(&["rotate", &idle, "--wait", "--timeout", "1"], None),
        6,
        &["did not finish within 1 s"],
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_exposed_destination_is_redelivered_and_resolved_and_inventory_clears() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut fanout = Fanout::new(&h).await;
    fanout.service.settings.max_attempts = 1;
    let receiver = Receiver::start(500).await;
    let secret = secret_with_value(&h, "exposed", random_policy(), "first-value").await;
    let destination = format!("backup-{}", h.id);
    let manifest = write_file(
        &format!("dest-{}.yaml", h.id),
        &format!(
            "destinations:\n  - {{id: \"{destination}\", kind: {{type: webhook, url: \"{}\"}}, secrets: [\"{secret}\"], owner: o, enabled: true}}\n",
            receiver.url
        ),
    );
    assert_eq!(brokerctl(&["apply", "-f", &manifest, "--yes"], None).code, 0);
    refused(
        &brokerctl(&["destination", "resolve", &destination, "--reason", "x"], None),
        1,
        &["is not exposed"],
    );

    // A rotation the destination does not confirm: exposed, inventory exits 3.
    let rotator = Rotator::for_secrets(&h, now()).await;
    rotator.service.rotate_on_demand(&secret).await.unwrap();
    fanout.set_clock(now() + 10);
    fanout.drain().await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(brokerctl(&["inventory", &secret], None).code, 3);
    // It cannot be resolved before it confirmed what it missed.
    let early = brokerctl(
        &["destination", "resolve", &destination, "--reason", "looks fine"],
        None,
    );
    refused(&early, 1, &["stays exposed", "redeliver"]);
    assert_eq!(brokerctl(&["inventory", &secret], None).code, 3);

    // The destination is fixed; the missed SET is queued again and sent by the retry schedule.
    receiver.status.store(202, std::sync::atomic::Ordering::SeqCst);
    let queued = brokerctl(&["destination", "redeliver", &destination], None);
    assert_eq!(queued.code, 0, "{}", queued.stderr);
    assert!(queued.stdout.contains("1 delivery(ies)"), "{}", queued.stdout);
    fanout.set_clock(now() + 20);
    let retried = fanout.service.retry_due().await.unwrap();
    assert_eq!(retried.deliveries_confirmed, 1, "{retried:?}");
    let sets = receiver.received();
    assert_eq!(sets.len(), 2);
    let jti = |body: &str| {
        let payload = body.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
        )
        .unwrap();
        claims["jti"].as_str().unwrap().to_string()
    };
    assert_eq!(jti(&sets[0].body), jti(&sets[1].body), "the same SET, sent again");

    let resolved = brokerctl(
        &["destination", "resolve", &destination, "--reason", "receiver fixed"],
        None,
    );
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    let inventory = brokerctl(&["inventory", &secret, "--output", "json"], None);
    assert_eq!(inventory.code, 0, "{}", inventory.stdout);
    assert_eq!(inventory.json()["unconfirmed"], serde_json::json!([]));
    let audited = h
        .scan(
            &h.config.audit_table,
            "target = :t AND reason = :r",
            &[(":t", &format!("destination:{destination}")), (":r", "receiver fixed")],
        )
        .await;
    assert_eq!(audited.len(), 1);
    assert_eq!(attr(&audited[0], "outcome"), "resolved");
}

#[tokio::test(flavor = "current_thread")]
async fn a_revoked_secret_or_destination_is_never_re_enabled() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let mut fanout = Fanout::new(&h).await;
    let secret = format!("revoked-{}", h.id);
    assert_eq!(
        brokerctl(
            &[
                "secret",
                "put",
                &secret,
                "--owner",
                "o",
                "--environment",
                "prod",
                "--generate",
                "32"
            ],
            None
        )
        .code,
        0
    );
    let destination = format!("gone-{}", h.id);
    // Loopback, and confirming: the revocations below leave no delivery pending for other tests.
    let receiver = Receiver::start(202).await;
    let entry = |enabled: bool| {
        format!(
            "destinations:\n  - {{id: \"{destination}\", kind: {{type: webhook, url: \"{}\"}}, secrets: [\"{secret}\"], owner: o, enabled: {enabled}}}\n",
            receiver.url
        )
    };
    let manifest = write_file(&format!("revived-{}.yaml", h.id), &entry(true));
    assert_eq!(brokerctl(&["apply", "-f", &manifest, "--yes"], None).code, 0);
    for (kind, id) in [("destination", &destination), ("secret", &secret)] {
        assert_eq!(
            brokerctl(&["revoke", kind, id, "--reason", "compromised"], None).code,
            0
        );
    }
    fanout.drain().await;
    assert_eq!(receiver.received().len(), 2, "both revocations told the destination");
    let dest_pk = format!("DEST#{destination}");
    let dest_item = || get(&h, &h.config.registry_table, &dest_pk, "#DEST");
    assert_eq!(
        dest_item().await.unwrap().get("enabled").and_then(|v| v.as_bool().ok()),
        Some(&false)
    );

    refused(
        &brokerctl(&["apply", "-f", &manifest, "--yes"], None),
        2,
        &["was revoked", "never re-enabled"],
    );
    assert_eq!(
        dest_item().await.unwrap().get("enabled").and_then(|v| v.as_bool().ok()),
        Some(&false)
    );
    let before = secret_head(&h, &secret).await.unwrap();
    refused(
        &brokerctl(&["secret", "put", &secret, "--enabled"], None),
        2,
        &["never re-enabled"],
    );
    assert_eq!(secret_head(&h, &secret).await.unwrap(), before);
    // Keeping them disabled is still allowed (e.g. a manifest that documents them).
    std::fs::write(&manifest, entry(false)).unwrap();
    assert_eq!(brokerctl(&["apply", "-f", &manifest, "--yes"], None).code, 0);
}
