//! Policy through the real brokerctl binary against moto: manifests with patterns, several
//! issuers, typed and CEL conditions; what `apply` refuses and why; `grant explain`.

mod common;

use common::{Run, brokerctl, brokerctl_async};
use nhi_tests::fanout::exclusive;
use nhi_tests::{AUDIENCE, Harness, now};
use serde_json::json;

fn write_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn refused(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 2, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    for needle in needles {
        assert!(run.stderr.contains(needle), "{needle:?} not in: {}", run.stderr);
    }
}

fn issuer_yaml(h: &Harness, prefix_segments: u32) -> String {
    let issuer = &h.issuer.issuer;
    format!(
        r#"issuers:
  - {{issuer: "{issuer}", name: ci, audiences: ["{AUDIENCE}"], jwks: {{type: url, url: "{issuer}/jwks.json"}}, algorithms: [ES256], enabled: true, pattern_prefix_segments: {prefix_segments}}}
"#
    )
}

fn grant_yaml(id: &str, subject_line: &str, target: &str, extra: &str) -> String {
    format!(
        r#"  - id: "{id}"
    {subject_line}
    environment: prod
    targets: ["{target}"]
    scopes: [read, deploy]
    max_ttl_seconds: 600
    approval_expires_at: "2099-01-01T00:00:00Z"
    owner: platform
    justification: deploys
{extra}"#
    )
}

#[tokio::test(flavor = "current_thread")]
async fn apply_refuses_unsafe_patterns_and_bad_conditions_with_their_reasons_and_writes_nothing() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let issuer = h.issuer.issuer.clone();
    let g = |n: &str| format!("p-{n}-{}", h.id);
    let org = format!("org-{}", h.id);
    let mut text = issuer_yaml(&h, 2);
    text.push_str("grants:\n");
    let cases = [
        (
            g("bare"),
            r#"issuer: "ISS"
    subject_pattern: "**""#
                .to_string(),
            String::new(),
        ),
        (
            g("noprefix"),
            r#"issuer: "ISS"
    subject_pattern: "*:ref:refs/heads/main""#
                .to_string(),
            String::new(),
        ),
        (
            g("nowild"),
            format!(
                r#"issuer: "ISS"
    subject_pattern: "repo:{org}/app:ref:refs/heads/main""#
            ),
            String::new(),
        ),
        (
            g("both"),
            format!(
                r#"issuers: ["ISS"]
    issuer: "ISS"
    subject: "repo:{org}/app""#
            ),
            String::new(),
        ),
        (
            g("cel"),
            format!(
                r#"issuer: "ISS"
    subject: "repo:{org}/app""#
            ),
            "    condition: \"claims.ref.matches('main')\"\n".to_string(),
        ),
        (
            g("celvar"),
            format!(
                r#"issuer: "ISS"
    subject: "repo:{org}/app""#
            ),
            "    condition: \"claim.ref == 'x'\"\n".to_string(),
        ),
        (
            g("range"),
            format!(
                r#"issuer: "ISS"
    subject: "repo:{org}/app""#
            ),
            "    claims: {run_attempt: {range: {min: 5, max: 1}}}\n".to_string(),
        ),
    ];
    for (id, subject, extra) in &cases {
        text.push_str(&grant_yaml(id, &subject.replace("ISS", &issuer), &h.target, extra));
    }
    let manifest = write_file(&format!("unsafe-{}.yaml", h.id), &text);
    let run = brokerctl(&["apply", "-f", &manifest, "--yes"], None);
    refused(
        &run,
        &[
            "grants[0].subject_pattern: \"**\" starts with a wildcard",
            "grants[1].subject_pattern: \"*:ref:refs/heads/main\" starts with a wildcard",
            "grants[2].subject_pattern: has no wildcard: use subject",
            "grants[3].issuers: give issuer or issuers, not both",
            "grants[4].condition: the expression uses matches()",
            "grants[5].condition: the expression refers to unknown variable claim",
            "grants[6].claims.run_attempt.range: min is above max",
            "nothing was written",
        ],
    );
    for (id, _, _) in &cases {
        assert!(
            h.registry.find("grant", id).await.unwrap().is_empty(),
            "{id} was not written"
        );
    }

    // Checked against the issuer (here in the same manifest, 2 segments): a pattern that ends its
    // literal prefix inside the owner segment reaches other owners (`org-x*` matches `org-x-evil`).
    let mut text = issuer_yaml(&h, 2);
    text.push_str("grants:\n");
    let reach = format!("issuer: \"{issuer}\"\n    subject_pattern: \"repo:{org}*/app:ref:refs/heads/main\"");
    text.push_str(&grant_yaml(&g("tenant"), &reach, &h.target, ""));
    let safe = format!("issuer: \"{issuer}\"\n    subject_pattern: \"repo:{org}/*:ref:refs/heads/main\"");
    text.push_str(&grant_yaml(&g("safe"), &safe, &h.target, ""));
    let manifest = write_file(&format!("reach-{}.yaml", h.id), &text);
    refused(
        &brokerctl(&["apply", "-f", &manifest, "--yes"], None),
        &[
            "1 problem(s)",
            "grants[0].subject_pattern",
            "fixes 1 whole segment(s)",
            "requires 2",
        ],
    );
    assert!(
        h.registry.find("grant", &g("safe")).await.unwrap().is_empty(),
        "all or nothing"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn grant_explain_names_each_grants_stage_and_the_winner_for_a_verified_token() {
    let _one_at_a_time = exclusive().await;
    let h = Harness::new().await;
    let issuer = h.issuer.issuer.clone();
    let org = format!("org-{}", h.id);
    let g = |n: &str| format!("x-{n}-{}", h.id);
    let mut text = issuer_yaml(&h, 2);
    text.push_str("grants:\n");
    text.push_str(&grant_yaml(
        &g("a-claims"),
        &format!("issuer: \"{issuer}\"\n    subject_pattern: \"repo:{org}/*:ref:refs/heads/main\""),
        &h.target,
        "    claims: {environment: [production], runner_environment: {one_of: [github-hosted]}}\n",
    ));
    text.push_str(&grant_yaml(
        &g("b-pattern"),
        &format!("issuers: [\"{issuer}\"]\n    subject_pattern: \"repo:{org}/*:ref:refs/heads/**\""),
        &h.target,
        "    claims: {ref_protected: true}\n    condition: \"claims.job_workflow_ref.startsWith('example-org/workflows/')\"\n",
    ));
    text.push_str(&grant_yaml(
        &g("c-other"),
        &format!("issuer: \"{issuer}\"\n    subject: \"repo:{org}/other:ref:refs/heads/main\""),
        &h.target,
        "",
    ));
    let manifest = write_file(&format!("explain-{}.yaml", h.id), &text);
    let applied = brokerctl(&["apply", "-f", &manifest, "--yes"], None);
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);

    let sub = format!("repo:{org}/app:ref:refs/heads/main");
    let mut claims = h.issuer.workload_claims(&sub, AUDIENCE, now(), 300);
    claims["environment"] = json!("staging");
    claims["ref_protected"] = json!(true);
    claims["job_workflow_ref"] = json!("example-org/workflows/.github/workflows/deploy.yml@refs/heads/main");
    let token = write_file(&format!("token-{}.jwt", h.id), &h.token(&claims));

    let run = brokerctl_async(
        &[
            "grant",
            "explain",
            "--token-file",
            &token,
            "--target",
            &h.target,
            "--scope",
            "deploy",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("signature verified"), "{}", run.stdout);
    assert!(run.stdout.contains("ruled out at claim: environment"), "{}", run.stdout);
    assert!(run.stdout.contains("ruled out at subject"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains(&format!("=> grant {} would be used", g("b-pattern"))),
        "{}",
        run.stdout
    );

    // JSON, and a request the winning grant's condition refuses: exit 3 with the exchange's answer.
    let run = brokerctl_async(
        &[
            "grant",
            "explain",
            "--token-file",
            &token,
            "--target",
            &h.target,
            "--scope",
            "admin",
            "--output",
            "json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["winner"], serde_json::Value::Null);
    assert_eq!(report["verified"], true);
    let stage_of = |id: &str| {
        report["grants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["grant_id"] == id)
            .map(|v| v["ruled_out"]["stage"].clone())
    };
    assert_eq!(stage_of(&g("b-pattern")), Some(json!("scope")));
    assert_eq!(stage_of(&g("a-claims")), Some(json!("claim")));
    assert_eq!(report["denied"]["reason"], "policy_scope_not_granted");

    // Claims without a token: only with the explicit flag, and the report says so.
    let claims_file = write_file(&format!("claims-{}.json", h.id), &claims.to_string());
    let run = brokerctl_async(
        &["grant", "explain", "--claims-file", &claims_file, "--target", &h.target],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "--claims-file needs --unverified: {}", run.stderr);
    let run = brokerctl_async(
        &[
            "grant",
            "explain",
            "--claims-file",
            &claims_file,
            "--unverified",
            "--target",
            &h.target,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("UNVERIFIED claims"), "{}", run.stdout);

    // A token that does not verify is refused, with the reason, never evaluated.
    let mut forged = h.token(&claims);
    forged.push('x');
    let forged = write_file(&format!("forged-{}.jwt", h.id), &forged);
    let run = brokerctl_async(
        &["grant", "explain", "--token-file", &forged, "--target", &h.target],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("does not verify"), "{}", run.stderr);

    // The exchange agrees with explain.
    let mut form = h.form(&h.token(&claims), &h.target);
    form.push(("scope".into(), "deploy".into()));
    let (status, body) = h.post_token(&form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "deploy");

    // grant list shows patterns as such.
    let list = brokerctl(&["grant", "list"], None);
    assert!(
        list.stdout
            .contains(&format!("repo:{org}/*:ref:refs/heads/** (pattern)")),
        "{}",
        list.stdout
    );
}

#[tokio::test(flavor = "current_thread")]
async fn grants_recorded_before_the_subject_index_are_found_again_after_apply() {
    let _one_at_a_time = exclusive().await;
    let mut h = Harness::new().await;
    // The exchange re-reads the issuer's policy generation every second here (5 s by default).
    let mut config = h.config.clone();
    config.policy_cache = std::time::Duration::from_secs(1);
    h.use_config(config).await;
    let sub = format!("repo:org/legacy-{}:ref:refs/heads/main", h.id);
    let id = format!("legacy-{}", h.id);
    let manifest_text = format!(
        "{}grants:\n{}",
        issuer_yaml(&h, 1),
        grant_yaml(
            &id,
            &format!("issuer: \"{}\"\n    subject: \"{sub}\"", h.issuer.issuer),
            &h.target,
            ""
        )
    );
    // The record as the previous version wrote it: no policy_key.
    let mut grant = h.grant(&id, &sub, 4_070_908_800); // 2099-01-01, as in the manifest
    grant.targets = vec![h.target.clone()];
    grant.owner = "platform".into();
    grant.justification = "deploys".into();
    let mut record = nhi_broker::aws::dynamo::grant_records(&grant).unwrap().remove(0);
    record.remove("policy_key");
    h.dynamo
        .put_item()
        .table_name(&h.config.registry_table)
        .set_item(Some(record))
        .send()
        .await
        .unwrap();
    let claims = h.issuer.workload_claims(&sub, AUDIENCE, now(), 300);
    let (status, _) = h.post_token(&h.form(&h.token(&claims), &h.target)).await;
    assert_eq!(status, 400, "not found by subject until re-applied (default deny)");

    let manifest = write_file(&format!("legacy-{}.yaml", h.id), &manifest_text);
    let dry = brokerctl(&["apply", "-f", &manifest], None);
    assert_eq!(dry.code, 4, "{}\n{}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains("policy_key"), "{}", dry.stdout);
    let applied = brokerctl(&["apply", "-f", &manifest, "--yes"], None);
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);
    // Within the refresh interval the catalog still holds the old generation; after it, the new
    // generation makes it look the subject up again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = h.post_token(&h.form(&h.token(&claims), &h.target)).await;
    assert_eq!(status, 200, "{body}");
    let again = brokerctl(&["apply", "-f", &manifest], None);
    assert_eq!(again.code, 0, "in sync: {}", again.stdout);
}
