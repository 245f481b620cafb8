//! Rotation against moto: secrets rotate once when due, resume after a crash at any step, stay
//! consistent under overlapping runs, notify destinations and audit with version ids only; the
//! signing-key ring publishes before signing and keeps retired keys until their tokens expire.

use futures::StreamExt;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use nhi_broker::domain::{Destination, DestinationKind, RotationPolicy, SecretGenerator, TOKEN_TYPE_SECRET};
use nhi_broker::ports::{SigningKeyAdmin, TokenSigner};
use nhi_broker::rotation::{SecretOutcome, next_version_id};
use nhi_tests::rotation::{
    Crash, GRACE, INTERVAL, KEY_MAX_AGE, Rotator, random_policy, rotation_records, secret_item, secret_with_value,
    version_stages,
};
use nhi_tests::{Harness, LogCapture, attr, now};
use std::sync::{Arc, Mutex};

fn stages(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    v.sort();
    v
}

/// The end state of exactly one rotation from v1: new CURRENT, v1 PREVIOUS for the grace period,
/// nothing pending, one audit event and one notice naming both versions.
async fn assert_rotated_once(h: &Harness, secret_id: &str) {
    let new = next_version_id(secret_id, Some("v1"));
    assert_eq!(
        version_stages(h, secret_id).await,
        stages(&[("v1", "PREVIOUS"), (&new, "CURRENT")]),
        "{secret_id}"
    );
    let item = secret_item(h, secret_id).await;
    assert_eq!(attr(&item, "current_version"), new);
    assert_eq!(attr(&item, "previous_version"), "v1");
    assert!(!item.contains_key("pending_version") && !item.contains_key("rotation_step"));
    let (events, notices) = rotation_records(h, secret_id).await;
    assert_eq!(events.len(), 1, "one audit event for {secret_id}");
    assert_eq!(
        (attr(&events[0], "old_version"), attr(&events[0], "new_version")),
        ("v1", new.as_str())
    );
    assert_eq!(notices.len(), 1, "one notice for {secret_id}");
    assert_eq!(attr(&notices[0], "new_version"), new);
}

/// A rotator built before the secrets it rotates sees them due if they were created within this
/// many seconds (a loaded CI machine takes more than a few seconds to create several secrets).
const CREATED_WITHIN: i64 = 120;

#[tokio::test(flavor = "current_thread")]
async fn a_due_secret_rotates_once_notifies_its_destinations_and_a_secret_not_yet_due_is_untouched() {
    let h = Harness::new().await;
    let due = secret_with_value(&h, "due", random_policy(), "first-value-of-due").await;
    let later = secret_with_value(&h, "later", random_policy(), "first-value-of-later").await;
    for (id, url) in [
        ("billing", "https://billing.example/hooks/nhi"),
        ("ci", "https://ci.example/nhi"),
    ] {
        h.registry
            .put_destination(&Destination {
                id: format!("{id}-{}", h.id),
                kind: DestinationKind::Webhook { url: url.into() },
                secrets: vec![due.clone()],
                owner: "team".into(),
                enabled: true,
            })
            .await
            .unwrap();
    }
    let rotate = Rotator::for_secrets(&h, now() + INTERVAL + 5).await;

    let outcome = rotate.service.rotate_secret(&due, false).await.unwrap();
    let new = next_version_id(&due, Some("v1"));
    assert_eq!(
        outcome,
        SecretOutcome::Rotated {
            old_version: Some("v1".into()),
            new_version: new.clone()
        }
    );
    assert_rotated_once(&h, &due).await;
    let (_, notices) = rotation_records(&h, &due).await;
    let destinations = notices[0]["destinations"].as_l().unwrap();
    assert_eq!(
        destinations.len(),
        2,
        "a notice for every destination holding the secret"
    );
    // No value, plaintext or ciphertext, in the audit trail or the notice.
    let (events, _) = rotation_records(&h, &due).await;
    for item in events.iter().chain(notices.iter()) {
        assert!(!item.contains_key("ciphertext") && !item.contains_key("value"));
    }

    // Due again only after the grace period (to retire PREVIOUS) and then the next interval.
    assert_eq!(
        rotate.service.rotate_secret(&due, false).await.unwrap(),
        SecretOutcome::NotDue
    );
    assert_rotated_once(&h, &due).await;
    assert_eq!(
        rotate.service.rotate_secret(&later, false).await.unwrap(),
        SecretOutcome::Rotated {
            old_version: Some("v1".into()),
            new_version: next_version_id(&later, Some("v1")),
        }
    );

    // A secret not yet due is untouched.
    let untouched = secret_with_value(&h, "untouched", random_policy(), "first-value-of-untouched").await;
    let before = secret_item(&h, &untouched).await;
    rotate.set_clock(now() + INTERVAL - 60);
    assert_eq!(
        rotate.service.rotate_secret(&untouched, false).await.unwrap(),
        SecretOutcome::NotDue
    );
    assert_eq!(secret_item(&h, &untouched).await, before);
    assert_eq!(version_stages(&h, &untouched).await, stages(&[("v1", "CURRENT")]));

    // After the grace period PREVIOUS is deprecated and its leases revoked (a revocation record).
    rotate.set_clock(now() + INTERVAL + 5 + GRACE);
    assert_eq!(
        rotate.service.rotate_secret(&due, false).await.unwrap(),
        SecretOutcome::PreviousRetired { version: "v1".into() }
    );
    assert_eq!(
        version_stages(&h, &due).await,
        stages(&[("v1", "DEPRECATED"), (&new, "CURRENT")])
    );
    let revocations = h
        .scan(
            &h.config.revocations_table,
            "pk = :pk",
            &[(":pk", &format!("secret_version#{due}#v1"))],
        )
        .await;
    assert_eq!(revocations.len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_killed_between_any_two_steps_is_resumed_to_one_correct_rotation() {
    let h = Harness::new().await;
    let crashes = [
        Crash::Before("stage_pending"),
        Crash::After("stage_pending"),
        Crash::Before("set"),
        Crash::After("set"),
        Crash::After("test"),
        Crash::Before("promote"),
        Crash::After("promote"),
    ];
    for (i, crash) in crashes.into_iter().enumerate() {
        let id = secret_with_value(&h, &format!("crash{i}"), random_policy(), "value-before-rotation").await;
        let rotate = Rotator::for_secrets(&h, now() + INTERVAL + 5).await;
        rotate.crash_at(crash);
        let err = rotate.service.rotate_secret(&id, false).await.unwrap_err();
        assert!(err.to_string().contains("simulated crash"), "{crash:?}: {err}");

        // The next run (a new execution environment) resumes where the dead one stopped.
        let next = Rotator::for_secrets(&h, now() + INTERVAL + 10).await;
        let outcome = next.service.rotate_secret(&id, false).await.unwrap();
        match crash {
            Crash::After("promote") => assert_eq!(outcome, SecretOutcome::NotDue, "{crash:?}"),
            _ => assert!(
                matches!(outcome, SecretOutcome::Rotated { .. }),
                "{crash:?}: {outcome:?}"
            ),
        }
        assert_rotated_once(&h, &id).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_concurrent_runs_leave_exactly_one_current_and_one_previous() {
    let h = Harness::new().await;
    let first = Rotator::for_secrets(&h, now() + INTERVAL + CREATED_WITHIN).await;
    let second = Rotator::for_secrets(&h, now() + INTERVAL + CREATED_WITHIN).await;
    for i in 0..4 {
        let id = secret_with_value(&h, &format!("race{i}"), random_policy(), "value-before-rotation").await;
        let (a, b) = tokio::join!(
            first.service.rotate_secret(&id, false),
            second.service.rotate_secret(&id, false)
        );
        let outcomes = [a.unwrap(), b.unwrap()];
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| matches!(o, SecretOutcome::Rotated { .. }))
                .count(),
            1,
            "{outcomes:?}"
        );
        assert_rotated_once(&h, &id).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn leases_after_rotation_carry_the_new_version_and_earlier_leases_keep_theirs() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let id = secret_with_value(&h, "leased", random_policy(), "the-value-before-rotation").await;
    let mut grant = h.grant(&format!("leased-grant-{}", h.id), &h.subject, now() + 3600);
    grant.targets = vec![id.clone()];
    h.registry.put_grant(&grant).await.unwrap();
    let release = || async {
        let mut form = h.form(&h.token(&h.claims()), &id);
        form.push(("requested_token_type".into(), TOKEN_TYPE_SECRET.into()));
        let (status, body) = h.post_token(&form).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let before = release().await;
    assert_eq!(before["secret_version"], "v1");
    assert_eq!(before["access_token"], "the-value-before-rotation");

    let rotate = Rotator::for_secrets(&h, now() + INTERVAL + 5).await;
    rotate.service.rotate_secret(&id, false).await.unwrap();
    let after = release().await;
    let new = next_version_id(&id, Some("v1"));
    assert_eq!(after["secret_version"], new.as_str());
    let value = after["access_token"].as_str().unwrap().to_string();
    assert_eq!(value.len(), 40);
    assert!(value.chars().all(|c| c.is_ascii_alphanumeric()), "declared alphabet");

    let leases = h.leases().await;
    let version_of = |lease_id: &serde_json::Value| {
        leases
            .iter()
            .find(|l| attr(l, "lease_id") == lease_id.as_str().unwrap())
            .map(|l| attr(l, "secret_version").to_string())
    };
    assert_eq!(version_of(&before["lease_id"]).as_deref(), Some("v1"));
    assert_eq!(version_of(&after["lease_id"]).as_deref(), Some(new.as_str()));
    logs.assert_free_of(&[value, "the-value-before-rotation".into()]);
}

/// A loopback rotation hook: verifies the broker's bearer JWT, records each call, and returns a
/// credential for `create`.
struct Hook {
    url: String,
    calls: Arc<Mutex<Vec<(String, String)>>>,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Hook {
    async fn start(jwks: jsonwebtoken::jwk::JwkSet, broker_issuer: String) -> Self {
        let listener = nhi_local::bind_loopback(0).await.unwrap();
        let url = format!("http://127.0.0.1:{}/rotate", listener.local_addr().unwrap().port());
        let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (seen, audience) = (calls.clone(), url.clone());
        let jwks = Arc::new(jwks);
        tokio::spawn(nhi_local::serve(
            listener,
            move |request: hyper::Request<hyper::body::Incoming>| {
                let (seen, audience, jwks, issuer) =
                    (seen.clone(), audience.clone(), jwks.clone(), broker_issuer.clone());
                async move {
                    let bearer = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .unwrap_or_default()
                        .to_string();
                    let header = jsonwebtoken::decode_header(&bearer).ok();
                    let key = header
                        .as_ref()
                        .filter(|h| h.typ.as_deref() == Some("nhi-rotation+jwt"))
                        .and_then(|h| h.kid.as_deref())
                        .and_then(|kid| jwks.find(kid))
                        .and_then(|jwk| DecodingKey::from_jwk(jwk).ok());
                    let mut validation = Validation::new(Algorithm::ES256);
                    validation.set_audience(&[&audience]);
                    validation.set_issuer(&[&issuer]);
                    let verified =
                        key.and_then(|k| jsonwebtoken::decode::<serde_json::Value>(&bearer, &k, &validation).ok());
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let Some(claims) = verified else {
                        return nhi_local::text(401, "text/plain", "unauthenticated".into());
                    };
                    let action = body["action"].as_str().unwrap_or_default().to_string();
                    let version = body["version"].as_str().unwrap_or_default().to_string();
                    assert_eq!(claims.claims["nhi_action"], action.as_str());
                    assert_eq!(claims.claims["nhi_version"], version.as_str());
                    assert_eq!(claims.claims["sub"], body["secret_id"]);
                    seen.lock().unwrap().push((action.clone(), version.clone()));
                    let reply = if action == "create" {
                        serde_json::json!({ "value": format!("hook-made-credential-{version}") })
                    } else {
                        serde_json::json!({})
                    };
                    nhi_local::text(200, "application/json", reply.to_string())
                }
            },
            stopped,
        ));
        Self {
            url,
            calls,
            _stop: stop,
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_hook_secret_is_made_by_its_owner_through_every_step_authenticated_by_the_broker() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let rotate = Rotator::for_secrets(&h, now() + INTERVAL + CREATED_WITHIN).await;
    let sdk = nhi_broker::aws::sdk_config().await;
    let jwks = nhi_broker::aws::kms::KmsSigner::new(aws_sdk_kms::Client::new(&sdk), &h.config.signing_key_id)
        .public_jwks()
        .await
        .unwrap();
    let hook = Hook::start(jwks, h.config.broker_issuer.clone()).await;
    let policy = RotationPolicy {
        generator: SecretGenerator::Hook { url: hook.url.clone() },
        ..random_policy()
    };
    let id = secret_with_value(&h, "hooked", policy, "owner-made-v1").await;
    rotate.crash_at(Crash::After("set"));
    assert!(rotate.service.rotate_secret(&id, false).await.is_err());
    let outcome = rotate.service.rotate_secret(&id, false).await.unwrap();
    let new = next_version_id(&id, Some("v1"));
    assert!(matches!(outcome, SecretOutcome::Rotated { .. }), "{outcome:?}");
    let calls: Vec<String> = hook
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(a, v)| {
            assert_eq!(v, &new);
            a.clone()
        })
        .collect();
    // The run that died after `set` landed is resumed at `test`: no step is repeated.
    assert_eq!(calls, ["create", "set", "test", "finish"]);
    assert_rotated_once(&h, &id).await;

    // The released value is the one the owner made, decrypted under the new version's context.
    let mut grant = h.grant(&format!("hooked-grant-{}", h.id), &h.subject, now() + 3600);
    grant.targets = vec![id.clone()];
    h.registry.put_grant(&grant).await.unwrap();
    let mut form = h.form(&h.token(&h.claims()), &id);
    form.push(("requested_token_type".into(), TOKEN_TYPE_SECRET.into()));
    let (status, body) = h.post_token(&form).await;
    assert_eq!(status, 200, "{body}");
    let value = format!("hook-made-credential-{new}");
    assert_eq!(body["access_token"], value.as_str());
    // Neither the rotation nor the release logs the new value's fingerprint.
    logs.assert_no_fingerprint_of(std::slice::from_ref(&value));
    logs.assert_free_of(&[value]);

    // A hook that refuses the broker's request fails the step, and nothing moves.
    let refused = secret_with_value(
        &h,
        "refused",
        RotationPolicy {
            // The hook accepts only tokens for its own URL: a token for another one is refused.
            generator: SecretGenerator::Hook {
                url: format!("{}-elsewhere", hook.url),
            },
            ..random_policy()
        },
        "owner-made-v1",
    )
    .await;
    assert!(rotate.service.rotate_secret(&refused, false).await.is_err());
    assert_eq!(version_stages(&h, &refused).await, stages(&[("v1", "CURRENT")]));
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_signed_before_key_rotation_verifies_until_it_expires_and_the_new_key_signs_after_the_overlap() {
    let mut h = Harness::new().await;
    let sdk = nhi_broker::aws::sdk_config().await;
    let kms = aws_sdk_kms::Client::new(&sdk);
    let admin = nhi_broker::aws::kms::KmsKeyAdmin::new(kms.clone(), None);
    let bootstrap = admin.create_signing_key("test bootstrap key").await.unwrap();
    let ring = format!("ring-{}", h.id);
    let mut config = h.config.clone();
    config.signing_key_ring = ring.clone();
    config.signing_key_id = bootstrap.clone();
    config.signing_keys_cache = std::time::Duration::ZERO;
    h.use_config(config.clone()).await;
    let api = &h;
    let kid_of = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let exchange = || async {
        let (status, body) = api.post_token(&api.form(&api.token(&api.claims()), &api.target)).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    };
    let verifies = |token: &str, jwks: &jsonwebtoken::jwk::JwkSet| {
        let Some(jwk) = jwks.find(&kid_of(token)) else {
            return false;
        };
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&api.target]);
        jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation).is_ok()
    };
    let kids = |jwks: &jsonwebtoken::jwk::JwkSet| {
        let mut k: Vec<String> = jwks.keys.iter().filter_map(|k| k.common.key_id.clone()).collect();
        k.sort();
        k
    };

    let old_token = exchange().await;
    assert_eq!(kid_of(&old_token), bootstrap);
    let t0 = now();
    let rotate = Rotator::new(api, t0, &ring, &bootstrap).await;
    let overlap = rotate.service.settings.keys.overlap_seconds;
    assert!(
        overlap >= config.max_token_ttl_seconds,
        "overlap covers the longest token TTL"
    );
    assert_eq!(
        rotate.service.rotate_signing_keys().await.unwrap().len(),
        1,
        "ring initialized"
    );
    assert!(
        rotate.service.rotate_signing_keys().await.unwrap().is_empty(),
        "nothing due"
    );

    // Max age reached: a next key is created and published, but does not sign yet.
    rotate.set_clock(t0 + KEY_MAX_AGE);
    let changes = rotate.service.rotate_signing_keys().await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let next = changes[0].strip_prefix("signing_key_created:").unwrap().to_string();
    let published = api.broker_jwks().await;
    assert_eq!(kids(&published), {
        let mut k = vec![bootstrap.clone(), next.clone()];
        k.sort();
        k
    });
    assert_eq!(
        kid_of(&exchange().await),
        bootstrap,
        "the next key does not sign before the overlap"
    );
    rotate.set_clock(t0 + KEY_MAX_AGE + overlap - 1);
    let changes = rotate.service.rotate_signing_keys().await.unwrap();
    assert!(changes.is_empty(), "{changes:?}");

    // After the overlap the next key signs; the old one stays published for its tokens.
    rotate.set_clock(t0 + KEY_MAX_AGE + overlap);
    let changes = rotate.service.rotate_signing_keys().await.unwrap();
    assert_eq!(changes, [format!("signing_key_activated:{next}")]);
    let new_token = exchange().await;
    assert_eq!(kid_of(&new_token), next);
    let published = api.broker_jwks().await;
    assert!(
        verifies(&old_token, &published),
        "a token signed before rotation still verifies"
    );
    assert!(verifies(&new_token, &published));

    // Once every token the old key signed has expired it leaves the JWKS and is deleted.
    let retire_window = rotate.service.settings.keys.publish_after_retire_seconds;
    rotate.set_clock(t0 + KEY_MAX_AGE + overlap + retire_window - 1);
    assert!(rotate.service.rotate_signing_keys().await.unwrap().is_empty());
    rotate.set_clock(t0 + KEY_MAX_AGE + overlap + retire_window);
    let changes = rotate.service.rotate_signing_keys().await.unwrap();
    assert_eq!(
        changes,
        [
            format!("signing_key_unpublished:{bootstrap}"),
            format!("signing_key_deletion_scheduled:{bootstrap}")
        ]
    );
    assert_eq!(kids(&api.broker_jwks().await), std::slice::from_ref(&next));
    let state = kms.describe_key().key_id(&bootstrap).send().await.unwrap();
    assert_eq!(
        state.key_metadata.unwrap().key_state,
        Some(aws_sdk_kms::types::KeyState::PendingDeletion)
    );
    // Every transition is in the audit trail, by key id.
    let events = h
        .scan(&h.config.audit_table, "reason = :r", &[(":r", "signing_key_activated")])
        .await;
    assert!(
        events
            .iter()
            .any(|e| attr(e, "new_version") == next && attr(e, "old_version") == bootstrap)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_scheduled_run_finds_due_secrets_through_the_index_in_bounded_batches() {
    let h = Harness::new().await;
    // Secrets registered without a value are due at once: rotation makes their first version.
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = format!("batch{i}-{}", h.id);
        h.registry
            .put_secret(&nhi_broker::domain::Secret {
                id: id.clone(),
                owner: "team".into(),
                environment: "prod".into(),
                enabled: true,
                description: String::new(),
                rotation: Some(random_policy()),
            })
            .await
            .unwrap();
        ids.push(id);
    }
    let mut rotate = Rotator::for_secrets(&h, now() + 1).await;
    rotate.service.settings.batch_size = 3;
    let first = rotate.service.run_scheduled().await.unwrap();
    assert_eq!((first.rotated, first.failed), (3, 0), "{first:?}");
    assert_eq!(first.remaining, 2, "{first:?}");
    let second = rotate.service.run_scheduled().await.unwrap();
    assert_eq!((second.rotated, second.remaining), (2, 0), "{second:?}");
    for id in &ids {
        let new = next_version_id(id, None);
        assert_eq!(version_stages(&h, id).await, stages(&[(&new, "CURRENT")]));
    }
    let third = rotate.service.run_scheduled().await.unwrap();
    assert_eq!(third.rotated, 0, "nothing is rotated twice");
}

/// Throughput of rotation against the local emulator: 1,000 due secrets (each with a value, so
/// each rotation also demotes CURRENT to PREVIOUS), rotated by scheduled runs of the deployed batch
/// size. A measurement, not a timed test; run it alone (README "Measurements"):
/// `bash infra/local/stack.sh test rotation_of_1000_secrets -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on demand"]
async fn rotation_of_1000_secrets_is_measured() {
    const SECRETS: usize = 1000;
    let h = Harness::new().await;
    let setup = std::time::Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..SECRETS)
        .map(|i| {
            let h = &h;
            async move { secret_with_value(h, &format!("bulk{i:04}"), random_policy(), "bulk-initial-value").await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    println!(
        "setup: {SECRETS} secrets registered in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let rotate = Rotator::for_secrets(&h, now() + INTERVAL + 5).await;
    rotate.calls.reset();
    let started = std::time::Instant::now();
    let mut runs = 0;
    loop {
        let report = rotate.service.run_scheduled().await.unwrap();
        runs += 1;
        assert_eq!(report.failed, 0, "{report:?}");
        if report.remaining == 0 {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = rotate.calls.by_operation();
    let total: u64 = calls.values().sum();
    println!(
        "rotated {SECRETS} secrets in {runs} runs (batch {}, concurrency {}): {elapsed:.1} s, {:.0} secrets/s, \
         {:.1} AWS calls per secret {calls:?}",
        rotate.service.settings.batch_size,
        rotate.service.settings.concurrency,
        SECRETS as f64 / elapsed,
        total as f64 / SECRETS as f64,
    );
    for id in ids.iter().step_by(97) {
        assert_rotated_once(&h, id).await;
    }
}
