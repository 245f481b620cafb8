//! Signing mode `envelope` against moto (its KMS extended with GenerateDataKeyPairWithoutPlaintext
//! by infra/local/moto_serial.py): rotate has KMS make a P-256 key pair, publishes it before it
//! signs, and exchange then signs in-process: a warm JWT exchange is one AWS call.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use nhi_broker::domain::{KeyRing, SigningMode};
use nhi_broker::ports::{KeyRingStore, SigningKeyAdmin};
use nhi_tests::rotation::Rotator;
use nhi_tests::{Harness, LogCapture, now};

#[tokio::test(flavor = "current_thread")]
async fn envelope_keys_are_made_by_kms_published_before_they_sign_and_sign_in_process() {
    let logs = LogCapture::global();
    let mut h = Harness::new().await;
    let sdk = nhi_broker::aws::sdk_config().await;
    let kms = aws_sdk_kms::Client::new(&sdk);
    let bootstrap = nhi_broker::aws::kms::KmsKeyAdmin::new(kms.clone(), None)
        .create_signing_key("test bootstrap key")
        .await
        .unwrap();
    let ring_name = format!("envelope-{}", h.id);
    let mut config = h.config.clone();
    config.signing_key_ring = ring_name.clone();
    config.signing_key_id = bootstrap.clone();
    config.signing_keys_cache = std::time::Duration::ZERO;
    config.signing_mode = SigningMode::Envelope;
    h.use_config(config.clone()).await;
    let kid_of = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let api = &h;
    let exchange = || async {
        let (status, body) = api.post_token(&api.form(&api.token(&api.claims()), &api.target)).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    };

    let t0 = now();
    let mut rotate = Rotator::new(api, t0, &ring_name, &bootstrap).await;
    rotate.service.settings.keys.mode = SigningMode::Envelope;
    rotate.service.settings.keys.envelope_max_age_seconds = 3600;
    let overlap = rotate.service.settings.keys.overlap_seconds;
    let changes = rotate.service.rotate_signing_keys().await.unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let envelope_kid = changes[1].strip_prefix("signing_key_created:").unwrap().to_string();
    assert!(envelope_kid.starts_with("env-"), "{envelope_kid}");
    assert_eq!(
        rotate
            .calls
            .by_operation()
            .get("KMS.GenerateDataKeyPairWithoutPlaintext"),
        Some(&1),
        "KMS made the key pair"
    );

    // Published at once, signing only after the overlap; the KMS key signs meanwhile.
    let published = api.broker_jwks().await;
    assert!(published.find(&envelope_kid).is_some());
    assert_eq!(kid_of(&exchange().await), bootstrap);

    // The ring holds the public key and a ciphertext, never a usable private key.
    let store = nhi_broker::wiring::key_ring(&config, &api.dynamo);
    let ring: KeyRing = store.load().await.unwrap().unwrap();
    let material = ring.key(&envelope_kid).unwrap().envelope.clone().unwrap();
    let ciphertext = base64::engine::general_purpose::STANDARD
        .decode(&material.private_key_ciphertext)
        .unwrap();
    assert!(
        aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ciphertext
        )
        .is_err()
    );
    // Bound to its kid: decrypting under another kid's context fails.
    let wrong_context = kms
        .decrypt()
        .key_id(&config.secrets_key_id)
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(ciphertext))
        .set_encryption_context(Some(
            nhi_broker::domain::envelope_key_context("env-other")
                .into_iter()
                .collect(),
        ))
        .send()
        .await;
    assert!(wrong_context.is_err());

    rotate.set_clock(t0 + overlap);
    let changes = rotate.service.rotate_signing_keys().await.unwrap();
    assert_eq!(changes, [format!("signing_key_activated:{envelope_kid}")]);
    let token = exchange().await;
    assert_eq!(kid_of(&token), envelope_kid);
    let jwks = api.broker_jwks().await;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[&api.target]);
    let jwk = jwks.find(&envelope_kid).unwrap();
    jsonwebtoken::decode::<serde_json::Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("an envelope-signed token verifies against the published key");

    // Warm (ring cached as deployed): the release transaction is the only AWS call.
    config.signing_keys_cache = std::time::Duration::from_secs(60);
    config.policy_cache = std::time::Duration::from_secs(60);
    h.use_config(config.clone()).await;
    let api = &h;
    let (status, _) = api.post_token(&api.form(&api.token(&api.claims()), &api.target)).await;
    assert_eq!(status, 200);
    api.api.calls.reset();
    let (status, body) = api.post_token(&api.form(&api.token(&api.claims()), &api.target)).await;
    assert_eq!(status, 200, "{body}");
    nhi_tests::assert_aws_calls(
        api,
        "warm JWT exchange, envelope mode",
        &[("DynamoDB.TransactWriteItems", 1)],
    );

    // In mode kms the same ring's KMS key signs; rotate retires the envelope key.
    config.signing_mode = SigningMode::Kms;
    h.use_config(config.clone()).await;
    let api = &h;
    let (status, body) = api.post_token(&api.form(&api.token(&api.claims()), &api.target)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kid_of(body["access_token"].as_str().unwrap()), bootstrap);
    rotate.service.settings.keys.mode = SigningMode::Kms;
    let changes = rotate.service.rotate_signing_keys().await.unwrap();
    assert_eq!(changes, [format!("signing_key_retired:{envelope_kid}")]);
    // The tokens it signed never reach the logs (the capture records every level).
    logs.assert_free_of(&[token]);
}
