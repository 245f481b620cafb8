//! Fast tests of the fanout service over in-memory fakes of its ports: ordering, idempotency on
//! replay, crash recovery and retry backoff. The adapters are tested against moto (tests/).

use nhi_broker::domain::{
    Delivery, DeliveryStatus, Destination, DestinationKind, Lease, LeaseStatus, Revocation, RevocationTarget,
    TargetKind,
};
use nhi_broker::fanout::{FanoutService, FanoutSettings, FanoutWork};
use nhi_broker::ports::DeliveryLedger;
use nhi_broker::testing::{
    FixedClock, InMemoryDeliveries, InMemoryFanoutLedger, InMemoryFanoutRegistry, RecordingNotifier,
    RecordingSessionDenier,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;

const NOW: i64 = 1_800_000_000;

struct World {
    ledger: Arc<InMemoryFanoutLedger>,
    deliveries: Arc<InMemoryDeliveries>,
    notifier: Arc<RecordingNotifier>,
    sessions: Arc<RecordingSessionDenier>,
    clock: Arc<FixedClock>,
    service: FanoutService,
}

fn lease(id: &str, kind: TargetKind, target: &str, destination: Option<&str>) -> Lease {
    Lease {
        lease_id: id.into(),
        kind,
        issuer: "https://idp".into(),
        subject: "ci".into(),
        grant_id: "g1".into(),
        target: target.into(),
        environment: "prod".into(),
        scope: vec![],
        subject_token_fingerprint: "sha256:x".into(),
        key_id: "k".into(),
        secret_version: None,
        aws_access_key_id: None,
        issued_at: NOW - 10,
        expires_at: NOW + 600,
        status: LeaseStatus::Active,
        destination: destination.map(String::from),
    }
}

fn webhook(id: &str, secrets: &[&str]) -> Destination {
    Destination {
        id: id.into(),
        kind: DestinationKind::Webhook {
            url: format!("https://{id}.example/events"),
        },
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        owner: "team".into(),
        enabled: true,
    }
}

fn world(leases: Vec<Lease>, destinations: Vec<Destination>) -> World {
    let ledger = Arc::new(InMemoryFanoutLedger::default());
    *ledger.leases.lock().unwrap() = leases;
    let deliveries = Arc::new(InMemoryDeliveries::default());
    let notifier = Arc::new(RecordingNotifier::default());
    let sessions = Arc::new(RecordingSessionDenier::default());
    let clock = Arc::new(FixedClock::at(NOW));
    let service = FanoutService {
        leases: ledger.clone(),
        registry: Arc::new(InMemoryFanoutRegistry::with(destinations)),
        deliveries: deliveries.clone(),
        notifier: notifier.clone(),
        sessions: sessions.clone(),
        clock: clock.clone(),
        settings: FanoutSettings {
            page_size: 2,
            max_attempts: 3,
            backoff_seconds: 30,
            ..FanoutSettings::default()
        },
    };
    World {
        ledger,
        deliveries,
        notifier,
        sessions,
        clock,
        service,
    }
}

fn revocation(kind: RevocationTarget, id: &str) -> FanoutWork {
    FanoutWork::Revocation {
        revocation: Revocation {
            revocation_id: "rev-1".into(),
            target_kind: kind,
            target_id: id.into(),
            actor: "operator:alice".into(),
            reason: "test".into(),
            at: NOW,
        },
        cursor: None,
    }
}

#[tokio::test]
async fn a_replayed_record_changes_nothing_and_sends_nothing_twice() {
    let w = world(
        vec![
            lease("a", TargetKind::Secret, "db", None),
            lease("b", TargetKind::Secret, "db", Some("sync")),
            lease("c", TargetKind::Secret, "other", None),
            lease("d", TargetKind::Jwt, "db", None),
        ],
        vec![
            webhook("ci", &["db"]),
            webhook("saas", &["db", "other"]),
            webhook("sync", &[]),
        ],
    );
    let first = w
        .service
        .process(revocation(RevocationTarget::Secret, "db"), None)
        .await
        .unwrap();
    assert_eq!(
        first.leases_revoked, 2,
        "only the secret's leases, not a JWT target with the same id"
    );
    assert_eq!(
        first.deliveries_confirmed, 3,
        "two holders of the secret and the holder of a lease copy"
    );
    let statuses: Vec<LeaseStatus> = w.ledger.leases.lock().unwrap().iter().map(|l| l.status).collect();
    assert_eq!(
        statuses,
        [
            LeaseStatus::Revoked,
            LeaseStatus::Revoked,
            LeaseStatus::Active,
            LeaseStatus::Active
        ]
    );

    let replay = w
        .service
        .process(revocation(RevocationTarget::Secret, "db"), None)
        .await
        .unwrap();
    assert_eq!(replay.leases_revoked, 0);
    assert_eq!(replay.deliveries_confirmed, 0);
    assert_eq!(
        replay.deliveries_skipped, 2,
        "confirmed deliveries are skipped, not resent"
    );
    assert_eq!(w.notifier.sent.lock().unwrap().len(), 3);
    assert_eq!(
        w.ledger.events.lock().unwrap().len(),
        2,
        "one audit event per revoked lease"
    );
}

#[tokio::test]
async fn aws_sessions_are_denied_before_their_leases_change_so_a_crash_is_redone() {
    let role = "arn:aws:iam::123456789012:role/nhi-broker/deployer";
    let w = world(
        vec![
            lease("s1", TargetKind::AwsRole, role, None),
            lease("s2", TargetKind::AwsRole, role, None),
        ],
        vec![],
    );
    let subject = "https://idp#ci";
    // The first lease write fails after the sessions were denied (a crash mid-page).
    w.ledger.fail_next_revocations.store(1, Ordering::SeqCst);
    assert!(
        w.service
            .process(revocation(RevocationTarget::Subject, subject), None)
            .await
            .is_err()
    );
    assert_eq!(w.sessions.denied.lock().unwrap().len(), 1);
    // The retried record finds whatever is still active and denies it again before revoking it.
    let retried = w
        .service
        .process(revocation(RevocationTarget::Subject, subject), None)
        .await
        .unwrap();
    assert_eq!(
        retried.leases_revoked, 1,
        "the lease the crash left active, and only it"
    );
    let denied = w.sessions.denied.lock().unwrap().clone();
    let last = &denied.last().unwrap().1;
    assert!(
        w.ledger
            .leases
            .lock()
            .unwrap()
            .iter()
            .all(|l| l.status == LeaseStatus::Revoked)
    );
    for lease in w.ledger.leases.lock().unwrap().iter() {
        assert!(
            denied.iter().any(|(r, ids)| r == role && ids.contains(&lease.lease_id)),
            "{} denied before it was marked revoked",
            lease.lease_id
        );
    }
    assert!(!last.is_empty());
}

#[tokio::test]
async fn a_sweep_past_its_deadline_saves_its_place_and_resumes_from_it() {
    let leases: Vec<Lease> = (0..5)
        .map(|i| lease(&format!("l{i}"), TargetKind::Jwt, "api", None))
        .collect();
    let w = world(leases, vec![]);
    let first = w
        .service
        .process(
            revocation(RevocationTarget::Grant, "g1"),
            Some(std::time::Instant::now()),
        )
        .await
        .unwrap();
    assert!(first.continued);
    assert_eq!(first.leases_revoked, 2);
    let (_, cursor) = w.ledger.progress.lock().unwrap().last().cloned().unwrap();
    let FanoutWork::Revocation { revocation, .. } = revocation(RevocationTarget::Grant, "g1") else {
        unreachable!()
    };
    let rest = w
        .service
        .process(
            FanoutWork::Revocation {
                revocation,
                cursor: Some(cursor),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(rest.leases_revoked, 3);
    assert!(!rest.continued);
    assert_eq!(w.ledger.denied.lock().unwrap().len(), 5, "every JWT jti is denied");
}

#[tokio::test]
async fn an_unacknowledged_delivery_backs_off_then_is_given_up_as_unconfirmed() {
    let w = world(vec![], vec![webhook("down", &["db"])]);
    w.notifier.failing.lock().unwrap().insert("down".into());
    let report = w
        .service
        .process(revocation(RevocationTarget::Secret, "db"), None)
        .await
        .unwrap();
    assert_eq!(report.deliveries_pending, 1);
    let pending: Delivery = w.deliveries.get("down", "rev-1").unwrap();
    assert_eq!((pending.attempts, pending.next_attempt_at), (1, Some(NOW + 30)));

    w.clock.0.store(NOW + 29, Ordering::SeqCst);
    assert_eq!(w.service.retry_due().await.unwrap().deliveries_pending, 0);
    w.clock.0.store(NOW + 30, Ordering::SeqCst);
    assert_eq!(w.service.retry_due().await.unwrap().deliveries_pending, 1);
    assert_eq!(
        w.deliveries.get("down", "rev-1").unwrap().next_attempt_at,
        Some(NOW + 90)
    );
    w.clock.0.store(NOW + 90, Ordering::SeqCst);
    assert_eq!(w.service.retry_due().await.unwrap().deliveries_unconfirmed, 1);
    let given_up = w.deliveries.get("down", "rev-1").unwrap();
    assert_eq!(given_up.status, DeliveryStatus::Unconfirmed);
    assert_eq!(w.deliveries.events.lock().unwrap().len(), 1, "audited once");
    assert!(w.deliveries.due(NOW + 100_000, 10).await.unwrap().is_empty());
    let jtis: Vec<String> = w
        .notifier
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|(_, jti, _)| jti.clone())
        .collect();
    assert_eq!(jtis.len(), 3);
    assert!(jtis.iter().all(|j| j == &jtis[0]), "one SET jti across attempts");
}

/// The exchange's and fanout's fakes share one lease store: a lease released through the
/// exchange's ledger is revoked by fanout, and the exchange's ledger then sees its jti denied.
#[tokio::test]
async fn the_exchange_and_fanout_fakes_share_one_lease_store() {
    use nhi_broker::ports::{LeaseLedger, LeaseReader};
    let store = Arc::new(nhi_broker::testing::InMemoryLedger::default());
    let released = lease("l1", TargetKind::Jwt, "https://api", None);
    let event = nhi_broker::domain::AuditEvent::new(
        nhi_broker::domain::AuditAction::TokenExchange,
        nhi_broker::domain::AuditOutcome::Released,
        NOW,
    );
    store.record_release(&released, &event, None).await.unwrap();
    let mut w = world(Vec::new(), Vec::new());
    w.ledger = Arc::new(InMemoryFanoutLedger::sharing(store.clone()));
    w.service.leases = w.ledger.clone();
    let report = w
        .service
        .process(revocation(RevocationTarget::Grant, "g1"), None)
        .await
        .unwrap();
    assert_eq!(report.leases_revoked, 1);
    assert_eq!(store.lease("l1").await.unwrap().unwrap().status, LeaseStatus::Revoked);
    assert!(store.is_denied("l1").await.unwrap());
}
