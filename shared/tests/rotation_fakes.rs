//! Fast tests of scheduled rotation runs on the in-memory fakes: the paths the moto tests do not
//! reach (skipped and failing secrets, and what a failure does to the rest of the batch).

use nhi_broker::domain::{
    Alphabet, KeyRing, RotationPolicy, Secret, SecretGenerator, SecretRotationState, VersionStage,
};
use nhi_broker::rotation::{
    KeyRotationSettings, RETRY_BACKOFF_SECONDS, RotationService, RotationSettings, next_version_id,
};
use nhi_broker::testing::{
    ContextBoundCipher, FixedClock, InMemoryKeyRing, InMemoryRotationStore, RecordingKeyAdmin, ScriptedHook,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;

const NOW: i64 = 1_795_514_400;

fn state(id: &str, generator: SecretGenerator, enabled: bool) -> SecretRotationState {
    SecretRotationState {
        secret: Secret {
            id: id.into(),
            owner: "team".into(),
            environment: "prod".into(),
            enabled,
            description: String::new(),
            rotation: Some(RotationPolicy {
                interval_seconds: 3600,
                grace_seconds: 600,
                generator,
            }),
        },
        current_version: Some("v1".into()),
        previous_version: None,
        previous_expires_at: None,
        pending_version: None,
        rotation_step: None,
        due_at: Some(NOW - 10),
    }
}

fn random() -> SecretGenerator {
    SecretGenerator::Random {
        length: 24,
        alphabet: Alphabet::Hex,
    }
}

struct World {
    service: RotationService,
    store: Arc<InMemoryRotationStore>,
    hook: Arc<ScriptedHook>,
}

fn world() -> World {
    let store = Arc::new(InMemoryRotationStore::default());
    let hook = Arc::new(ScriptedHook::default());
    let ring = InMemoryKeyRing::default();
    *ring.0.lock().unwrap() = Some(KeyRing {
        version: 1,
        ..KeyRing::bootstrap("key-0", NOW)
    });
    let service = RotationService {
        store: store.clone(),
        encryptor: Arc::new(ContextBoundCipher),
        hook: hook.clone(),
        key_ring: Arc::new(ring),
        key_admin: Arc::new(RecordingKeyAdmin::default()),
        clock: Arc::new(FixedClock::at(NOW)),
        settings: RotationSettings {
            batch_size: 10,
            concurrency: 4,
            keys: KeyRotationSettings::derived("key-0", 86_400, 3600, 60, 30, 7),
        },
    };
    World { service, store, hook }
}

#[tokio::test]
async fn a_failing_hook_is_backed_off_and_does_not_hold_up_the_rest_of_the_batch() {
    let w = world();
    w.store.insert(state(
        "hooked",
        SecretGenerator::Hook {
            url: "https://owner.example/rotate".into(),
        },
        true,
    ));
    w.store.insert(state("generated", random(), true));
    w.hook.fail.store(true, Ordering::SeqCst);

    let report = w.service.run_scheduled().await.unwrap();
    assert_eq!(
        (report.rotated, report.failed, report.remaining),
        (1, 1, 0),
        "{report:?}"
    );
    let hooked = w.store.secrets.lock().unwrap()["hooked"].clone();
    assert_eq!(
        hooked.due_at,
        Some(NOW + RETRY_BACKOFF_SECONDS),
        "retried after the backoff, not every run"
    );
    assert_eq!(hooked.current_version.as_deref(), Some("v1"), "nothing moved");
    assert!(
        hooked.pending_version.is_none(),
        "create failed before anything was staged"
    );

    // Once the owner answers again, the next due run completes the rotation.
    w.hook.fail.store(false, Ordering::SeqCst);
    let outcome = w.service.rotate_secret("hooked", true).await.unwrap();
    assert!(
        matches!(outcome, nhi_broker::rotation::SecretOutcome::Rotated { .. }),
        "{outcome:?}"
    );
    let new = next_version_id("hooked", Some("v1"));
    let stages = w.store.stages.lock().unwrap().clone();
    assert_eq!(stages[&("hooked".to_string(), new)], VersionStage::Current);
    assert_eq!(
        stages[&("hooked".to_string(), "v1".to_string())],
        VersionStage::Previous
    );
}

#[tokio::test]
async fn disabled_secrets_and_unusable_policies_are_skipped_and_rescheduled_not_retried_every_run() {
    let w = world();
    w.store.insert(state("disabled", random(), false));
    let mut bad = state("bad-policy", random(), true);
    bad.secret.rotation.as_mut().unwrap().interval_seconds = 1;
    w.store.insert(bad);

    let report = w.service.run_scheduled().await.unwrap();
    assert_eq!(
        (report.rotated, report.skipped, report.remaining),
        (0, 2, 0),
        "{report:?}"
    );
    let secrets = w.store.secrets.lock().unwrap().clone();
    assert_eq!(secrets["disabled"].due_at, Some(NOW + 3600));
    assert_eq!(secrets["bad-policy"].due_at, Some(NOW + 86_400));
    assert!(
        w.store.events.lock().unwrap().is_empty(),
        "nothing rotated, nothing audited"
    );
}
