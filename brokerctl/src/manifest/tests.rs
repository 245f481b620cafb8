use super::checks::is_role_arn;
use super::*;

const NOW: i64 = 1_800_000_000;

fn paths(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn every_malformed_entry_is_reported_with_its_path() {
    let text = r#"
issuers:
  - {issuer: "https://a", name: a, audiences: [x], jwks: {type: url, url: "https://a/j", extra: 1}, algorithms: [ES256], enabled: true}
targets:
  - {id: t, kind: jwt, environment: prod, owner: o, enabled: true, colour: red}
destinations:
  - {id: d, kind: {type: webhook, url: "https://d"}, secrets: [s], owner: o, enabled: true, retries: 3}
grants:
  - {id: g, subjekt: x}
extra: []
"#;
    let problems = Manifest::parse(text, "m.yaml").unwrap_err();
    // Document order or key order, depending on serde_json's features in the build.
    let mut sorted = paths(&problems);
    sorted.sort();
    assert_eq!(
        sorted,
        ["destinations[0]", "extra", "grants[0]", "issuers[0]", "targets[0]"],
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .all(|p| p.message.contains("unknown field") || p.path == "extra")
    );
}

#[test]
fn limits_duplicates_and_past_approvals_are_all_reported() {
    let grant = |id: &str| GrantSpec {
        id: id.into(),
        issuer: Some("https://issuer".into()),
        issuers: vec![],
        subject: Some("s".into()),
        subject_pattern: None,
        condition: None,
        claims: Default::default(),
        environment: "prod".into(),
        targets: vec!["t".into()],
        scopes: vec![],
        max_ttl_seconds: 600,
        session_policy: None,
        approval_expires_at: Value::from(NOW + 10),
        owner: "o".into(),
        justification: "j".into(),
        delivers_to: None,
    };
    let mut manifest = Manifest {
        grants: vec![grant("g"), grant("g"), grant(""), grant("h")],
        ..Default::default()
    };
    manifest.grants[3].subject = Some("x".repeat(10 * 1024 * 1024));
    manifest.grants[3].max_ttl_seconds = 1_000_000_000_000;
    manifest.grants[3].approval_expires_at = Value::from(NOW - 1);
    manifest.grants[3].targets = vec!["t".into(), "t".into()];
    let problems = manifest.problems(NOW);
    assert_eq!(
        paths(&problems),
        [
            "grants[1].id",
            "grants[2].id",
            "grants[3].subject",
            "grants[3].targets[1]",
            "grants[3].max_ttl_seconds",
            "grants[3].approval_expires_at",
        ],
        "{problems:?}"
    );
    assert!(
        Manifest {
            grants: vec![grant("g")],
            ..Default::default()
        }
        .problems(NOW)
        .is_empty()
    );
}

#[test]
fn references_must_exist_and_agree() {
    let manifest = Manifest::parse(
        r#"
grants:
  - id: g
    issuer: "https://missing"
    subject: s
    environment: prod
    targets: [dev-api, nowhere, "arn:aws:iam::123456789012:role/r", "urn:nhi-broker:introspection"]
    max_ttl_seconds: 60
    approval_expires_at: 2099-01-01T00:00:00Z
    owner: o
    justification: j
    delivers_to: no-such-destination
destinations:
  - {id: d, kind: {type: webhook, url: "https://d"}, secrets: [missing-secret], owner: o, enabled: true}
"#,
        "m.yaml",
    )
    .unwrap();
    assert!(manifest.problems(NOW).is_empty(), "{:?}", manifest.problems(NOW));
    let known = Known {
        targets: BTreeMap::from([
            ("dev-api".to_string(), ("dev".to_string(), TargetKind::Jwt)),
            (
                "arn:aws:iam::123456789012:role/r".to_string(),
                ("prod".to_string(), TargetKind::AwsRole),
            ),
        ]),
        ..Default::default()
    };
    let problems = manifest.reference_problems(&known);
    assert_eq!(
        paths(&problems),
        [
            "grants[0].issuer",
            "grants[0].targets[0]",
            "grants[0].targets[1]",
            "grants[0].max_ttl_seconds",
            "grants[0].delivers_to",
            "destinations[0].secrets[0]",
        ],
        "{problems:?}"
    );
}

#[test]
fn ids_and_role_arns() {
    assert!(id_problem("payments-db.prod:v1").is_none());
    assert!(id_problem("a#b").is_some() && id_problem("").is_some() && id_problem("a b").is_some());
    assert!(is_role_arn("arn:aws:iam::123456789012:role/deploy"));
    assert!(!is_role_arn("arn:aws:iam::12345:role/deploy") && !is_role_arn("deploy"));
}

/// The README's policy example is a manifest `apply` accepts, and its issuers' settings refuse
/// what they should.
#[test]
fn the_readme_policy_example_is_a_valid_manifest() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("issuers:\n  - issuer: https://token.actions.githubusercontent.com")
        .expect("example");
    let text = &readme[start..start + readme[start..].find("```").unwrap()];
    let manifest = Manifest::parse(text, "README.md").unwrap();
    assert_eq!(manifest.grants.len(), 3);
    assert_eq!(manifest.problems(NOW), vec![], "phase 1");
    let known = Known {
        targets: [
            ("https://deploy-api.example.com", "prod", TargetKind::Jwt),
            (
                "arn:aws:iam::123456789012:role/payments-deployer",
                "prod",
                TargetKind::AwsRole,
            ),
            ("crm-api-key", "prod", TargetKind::Secret),
        ]
        .into_iter()
        .map(|(id, env, kind)| (id.to_string(), (env.to_string(), kind)))
        .collect(),
        issuers: [
            ("https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE".to_string(), 1),
            ("https://example.okta.com/oauth2/default".to_string(), 1),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    assert_eq!(manifest.reference_problems(&known), vec![], "phase 2");
    let mut reaching = manifest.clone();
    reaching.grants[0].subject_pattern = Some("repo:example-org*:environment:production".into());
    let problems = reaching.reference_problems(&known);
    assert_eq!(
        paths(&problems),
        ["grants[0].subject_pattern", "grants[0].subject_pattern"],
        "{problems:?}"
    );
}
