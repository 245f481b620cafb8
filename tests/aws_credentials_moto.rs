//! AWS credentials through STS AssumeRole against moto: policy decides before STS is called, the
//! lease records the session, and the credentials work.

use nhi_broker::domain::{TOKEN_TYPE_AWS_CREDENTIALS, Target, TargetKind};
use nhi_tests::{Harness, LogCapture, attr, now};

const SESSION_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;

async fn role(h: &Harness, name: &str, environment: &str) -> String {
    let arn = format!("arn:aws:iam::123456789012:role/nhi-broker/{name}-{}", h.id);
    h.registry
        .put_target(&Target {
            id: arn.clone(),
            kind: TargetKind::AwsRole,
            environment: environment.into(),
            owner: "team".into(),
            enabled: true,
        })
        .await
        .unwrap();
    arn
}

async fn grant(h: &Harness, name: &str, roles: &[&str], max_ttl: i64, approval_expires_at: i64) {
    let mut grant = h.grant(&format!("{name}-{}", h.id), &h.subject, approval_expires_at);
    grant.targets = roles.iter().map(|r| r.to_string()).collect();
    grant.max_ttl_seconds = max_ttl;
    grant.session_policy = Some(SESSION_POLICY.into());
    h.registry.put_grant(&grant).await.unwrap();
}

fn form(h: &Harness, role_arn: &str, ttl: Option<&str>) -> Vec<(String, String)> {
    let mut form = h.form(&h.token(&h.claims()), role_arn);
    form.push(("requested_token_type".into(), TOKEN_TYPE_AWS_CREDENTIALS.into()));
    if let Some(ttl) = ttl {
        form.push(("requested_expires_in".into(), ttl.into()));
    }
    form
}

#[tokio::test(flavor = "current_thread")]
async fn granted_role_yields_working_session_credentials_recorded_as_a_lease() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let arn = role(&h, "deployer", "prod").await;
    grant(&h, "deploy-role", &[&arn], 3600, now() + 7200).await;

    let (status, body) = h.post_token(&form(&h, &arn, Some("1200"))).await;
    assert_eq!(status, 200, "{}", body["error_description"]);
    assert_eq!(body["issued_token_type"], TOKEN_TYPE_AWS_CREDENTIALS);
    assert_eq!(body["token_type"], "N_A");
    assert_eq!(body["expires_in"], 1200);
    let access_key_id = body["aws_access_key_id"].as_str().unwrap().to_string();
    let secret_access_key = body["aws_secret_access_key"].as_str().unwrap().to_string();
    let session_token = body["access_token"].as_str().unwrap().to_string();
    let lease_id = body["lease_id"].as_str().unwrap().to_string();

    let leases = h.leases().await;
    assert_eq!(leases.len(), 1);
    assert_eq!(attr(&leases[0], "kind"), "aws_role");
    assert_eq!(attr(&leases[0], "target"), arn);
    assert_eq!(attr(&leases[0], "lease_id"), lease_id);
    assert_eq!(
        attr(&leases[0], "aws_access_key_id"),
        access_key_id,
        "the lease records the session"
    );

    // The credentials are real to the emulator: the session is named after the lease.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            &access_key_id,
            &secret_access_key,
            Some(session_token.clone()),
            None,
            "test",
        ))
        .load()
        .await;
    let identity = aws_sdk_sts::Client::new(&sdk)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    let caller_arn = identity.arn().unwrap();
    assert!(
        caller_arn.contains(&format!("deployer-{}/nhi-{lease_id}", h.id)),
        "{caller_arn}"
    );

    logs.assert_free_of(&[secret_access_key, session_token]);
}

#[tokio::test(flavor = "current_thread")]
async fn role_denials_never_call_sts_and_release_nothing() {
    let h = Harness::new().await;
    let ungranted = role(&h, "ungranted", "prod").await;
    let staging = role(&h, "staging", "staging").await;
    let lapsed = role(&h, "lapsed", "prod").await;
    let short = role(&h, "short", "prod").await;
    grant(&h, "staging-grant", &[&staging], 3600, now() + 7200).await;
    grant(&h, "lapsed-grant", &[&lapsed], 3600, now() - 1).await;
    grant(&h, "short-grant", &[&short], 600, now() + 7200).await;
    let unregistered = "arn:aws:iam::123456789012:role/nhi-broker/not-registered".to_string();

    h.api.calls.reset();
    for (name, arn, error) in [
        ("grant does not allow the role", &ungranted, "invalid_request"),
        ("environment differs", &staging, "invalid_request"),
        ("approval expired", &lapsed, "invalid_request"),
        ("grant below the STS minimum session", &short, "invalid_request"),
        ("unregistered role", &unregistered, "invalid_target"),
    ] {
        let (status, body) = h.post_token(&form(&h, arn, None)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{name}: {body}");
        assert!(body.get("aws_secret_access_key").is_none(), "{name}");
    }
    assert!(h.leases().await.is_empty());
    assert!(
        !h.api.calls.by_operation().contains_key("STS.AssumeRole"),
        "{:?}",
        h.api.calls.by_operation()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_warm_aws_credentials_exchange_makes_exactly_two_aws_calls() {
    let mut h = Harness::new().await;
    h.keep_caches_warm().await;
    let arn = role(&h, "counted", "prod").await;
    grant(&h, "counted-grant", &[&arn], 3600, now() + 7200).await;
    assert_eq!(h.post_token(&form(&h, &arn, None)).await.0, 200);
    h.api.calls.reset();
    assert_eq!(h.post_token(&form(&h, &arn, None)).await.0, 200);
    nhi_tests::assert_aws_calls(
        &h,
        "warm AWS-credentials exchange",
        &[("STS.AssumeRole", 1), ("DynamoDB.TransactWriteItems", 1)],
    );
}
