//! Secret leases against moto: KMS encryption context binds each ciphertext to its secret id,
//! version and environment; values never reach a log line.

use nhi_broker::aws::kms::KmsSecretCipher;
use nhi_broker::domain::{Secret, TOKEN_TYPE_SECRET, secret_encryption_context};
use nhi_broker::ports::SecretDecryptor;
use nhi_broker::ports::SecretEncryptor;
use nhi_broker::redact::SecretString;
use nhi_tests::{Harness, LogCapture, attr, now};

struct Secrets<'a> {
    h: &'a Harness,
    cipher: KmsSecretCipher,
}

impl<'a> Secrets<'a> {
    async fn new(h: &'a Harness) -> Self {
        let sdk = nhi_broker::aws::sdk_config().await;
        Self {
            h,
            cipher: KmsSecretCipher::new(aws_sdk_kms::Client::new(&sdk), &h.config.secrets_key_id),
        }
    }

    /// Register a secret with one CURRENT version holding `value`; returns the secret id.
    async fn store(&self, name: &str, environment: &str, enabled: bool, value: &str) -> String {
        let id = format!("{name}-{}", self.h.id);
        let secret = Secret {
            id: id.clone(),
            owner: "team".into(),
            environment: environment.into(),
            enabled,
            description: "test".into(),
            rotation: None,
        };
        self.h.registry.put_secret(&secret).await.unwrap();
        let context = secret_encryption_context(&id, "v1", environment);
        let ciphertext = self
            .cipher
            .encrypt(&SecretString::new(value.into()), &context)
            .await
            .unwrap();
        self.h
            .registry
            .set_current_version(&id, "v1", ciphertext, now())
            .await
            .unwrap();
        id
    }

    /// A grant for the harness subject listing these secrets.
    async fn grant(&self, name: &str, secrets: &[&str], approval_expires_at: i64) {
        let mut grant = self
            .h
            .grant(&format!("{name}-{}", self.h.id), &self.h.subject, approval_expires_at);
        grant.targets = secrets.iter().map(|s| s.to_string()).collect();
        self.h.registry.put_grant(&grant).await.unwrap();
    }

    fn form(&self, secret_id: &str) -> Vec<(String, String)> {
        let mut form = self.h.form(&self.h.token(&self.h.claims()), secret_id);
        form.push(("requested_token_type".into(), TOKEN_TYPE_SECRET.into()));
        form
    }
}

fn secret_value() -> String {
    format!("s3cr3t-{}", uuid::Uuid::new_v4())
}

#[tokio::test(flavor = "current_thread")]
async fn a_granted_secret_is_released_with_its_version_and_leased() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let s = Secrets::new(&h).await;
    let value = secret_value();
    let id = s.store("db-password", "prod", true, &value).await;
    s.grant("secret-grant", &[&id], now() + 3600).await;

    let (status, body) = h.post_token(&s.form(&id)).await;
    assert_eq!(status, 200, "{}", body["error_description"]);
    assert_eq!(body["access_token"], value.as_str());
    assert_eq!(body["issued_token_type"], TOKEN_TYPE_SECRET);
    assert_eq!(body["token_type"], "N_A");
    assert_eq!(body["secret_version"], "v1");
    let lease_id = body["lease_id"].as_str().unwrap();

    let leases: Vec<_> = h
        .leases()
        .await
        .into_iter()
        .filter(|l| attr(l, "target") == id)
        .collect();
    assert_eq!(leases.len(), 1);
    assert_eq!(attr(&leases[0], "lease_id"), lease_id);
    assert_eq!(attr(&leases[0], "kind"), "secret");
    assert_eq!(
        attr(&leases[0], "secret_version"),
        "v1",
        "the lease records which version went to whom"
    );
    assert_eq!(attr(&leases[0], "subject"), h.subject);

    logs.assert_no_fingerprint_of(std::slice::from_ref(&value));
    logs.assert_free_of(&[value]);
}

#[tokio::test(flavor = "current_thread")]
async fn secret_denials_release_nothing() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let s = Secrets::new(&h).await;
    let values: Vec<String> = (0..4).map(|_| secret_value()).collect();
    let ungranted = s.store("ungranted", "prod", true, &values[0]).await;
    let staging = s.store("staging-only", "staging", true, &values[1]).await;
    let lapsed = s.store("lapsed", "prod", true, &values[2]).await;
    let disabled = s.store("disabled", "prod", false, &values[3]).await;
    // The harness grant is for prod; it lists the staging secret and the disabled one.
    s.grant("prod-grant", &[&staging, &disabled], now() + 3600).await;
    s.grant("lapsed-grant", &[&lapsed], now() - 1).await;

    for (name, id, error, reason) in [
        (
            "grant does not allow the secret",
            &ungranted,
            "invalid_request",
            "policy_no_grant",
        ),
        (
            "environment differs",
            &staging,
            "invalid_request",
            "policy_environment_mismatch",
        ),
        (
            "approval expired",
            &lapsed,
            "invalid_request",
            "policy_approval_expired",
        ),
        ("secret disabled", &disabled, "invalid_target", "invalid_target"),
        (
            "unknown secret",
            &format!("nope-{}", h.id),
            "invalid_target",
            "invalid_target",
        ),
    ] {
        let (status, body) = h.post_token(&s.form(id)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{name}: {body}");
        assert!(body.get("access_token").is_none(), "{name}");
        let audited = h
            .audit_events()
            .await
            .into_iter()
            .any(|e| attr(&e, "target") == id && attr(&e, "reason") == reason);
        assert!(audited, "{name}: denial audited as {reason}");
    }
    assert!(h.leases().await.is_empty(), "no denial writes a lease");
    logs.assert_free_of(&values);
}

#[tokio::test(flavor = "current_thread")]
async fn a_ciphertext_moved_to_another_record_does_not_decrypt() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let s = Secrets::new(&h).await;
    let value = secret_value();
    let original = s.store("original", "prod", true, &value).await;

    // KMS itself refuses the ciphertext under any other secret id, version or environment.
    let ciphertext = s
        .cipher
        .encrypt(
            &SecretString::new(value.clone()),
            &secret_encryption_context(&original, "v1", "prod"),
        )
        .await
        .unwrap();
    for context in [
        secret_encryption_context("other-secret", "v1", "prod"),
        secret_encryption_context(&original, "v2", "prod"),
        secret_encryption_context(&original, "v1", "staging"),
        vec![],
    ] {
        let err = s.cipher.decrypt(&ciphertext, &context).await.unwrap_err();
        assert_eq!(err.aws_code(), Some("InvalidCiphertextException"), "{context:?}");
    }
    assert_eq!(
        s.cipher
            .decrypt(&ciphertext, &secret_encryption_context(&original, "v1", "prod"))
            .await
            .unwrap()
            .expose(),
        value
    );

    // Copy that ciphertext into another secret's record: exchange cannot release it.
    let target = format!("copy-{}", h.id);
    h.registry
        .put_secret(&Secret {
            id: target.clone(),
            owner: "team".into(),
            environment: "prod".into(),
            enabled: true,
            description: String::new(),
            rotation: None,
        })
        .await
        .unwrap();
    h.registry
        .set_current_version(&target, "v1", ciphertext, now())
        .await
        .unwrap();
    s.grant("copy-grant", &[&target], now() + 3600).await;
    let (status, body) = h.post_token(&s.form(&target)).await;
    assert_eq!((status, body["error"].as_str()), (500, Some("server_error")), "{body}");
    assert!(body.get("access_token").is_none());
    assert!(h.leases().await.is_empty());
    logs.assert_free_of(&[value]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_warm_secret_exchange_makes_exactly_three_aws_calls() {
    let mut h = Harness::new().await;
    h.keep_caches_warm().await;
    let s = Secrets::new(&h).await;
    let id = s.store("counted", "prod", true, &secret_value()).await;
    s.grant("counted-grant", &[&id], now() + 3600).await;
    assert_eq!(h.post_token(&s.form(&id)).await.0, 200);
    h.api.calls.reset();
    assert_eq!(h.post_token(&s.form(&id)).await.0, 200);
    nhi_tests::assert_aws_calls(
        &h,
        "warm secret exchange",
        &[
            ("DynamoDB.GetItem", 1),
            ("KMS.Decrypt", 1),
            ("DynamoDB.TransactWriteItems", 1),
        ],
    );
}

/// Issue 15: the release re-checks the grant and the secret through their sharded fences, not
/// their items. A revocation recorded by an operator is final at once, however warm the
/// exchange's policy catalog.
#[tokio::test(flavor = "current_thread")]
async fn a_revoked_grant_or_secret_releases_nothing_from_the_moment_it_is_recorded() {
    use nhi_broker::domain::RevocationTarget;
    let h = Harness::new().await;
    let s = Secrets::new(&h).await;
    let id = s.store("fenced", "prod", true, &secret_value()).await;
    s.grant("fenced-grant", &[&id], now() + 3600).await;
    let (status, body) = h.post_token(&s.form(&id)).await;
    assert_eq!(status, 200, "{body}");

    h.revoke(RevocationTarget::Secret, &id, "vendor breach", now()).await;
    let (status, body) = h.post_token(&s.form(&id)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    assert_eq!(body["error_description"], "the secret is revoked", "{body}");

    // The JWT grant, cached as active: its fence refuses at release.
    let (status, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
    assert_eq!(status, 200, "{body}");
    h.revoke(RevocationTarget::Grant, &h.grant_id, "offboarding", now())
        .await;
    for _ in 0..8 {
        // Every shard is raised: whichever one a release checks refuses it.
        let (status, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
        assert_eq!(
            (status, body["error_description"].as_str()),
            (400, Some("the matching grant has been revoked")),
            "{body}"
        );
    }
}
