//! Adapter tests at the SDK boundary (aws-smithy-mocks).

use super::*;
use crate::domain::AuditEvent;
use crate::domain::Lease;
use crate::domain::LeaseStatus;
use crate::domain::{AuditAction, AuditOutcome, TargetKind};
use crate::error::TokenRejection;
use crate::ports::LeaseLedger;
use aws_sdk_dynamodb::operation::transact_write_items::{TransactWriteItemsError, TransactWriteItemsOutput};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use std::sync::{Arc, Mutex};

fn lease() -> Lease {
    Lease {
        lease_id: "lease-1".into(),
        kind: TargetKind::Jwt,
        issuer: "https://idp".into(),
        subject: "sub".into(),
        grant_id: "g".into(),
        target: "https://api".into(),
        environment: "prod".into(),
        scope: vec![],
        subject_token_fingerprint: "sha256:00".into(),
        key_id: "k".into(),
        secret_version: None,
        aws_access_key_id: None,
        issued_at: 1,
        expires_at: 61,
        status: LeaseStatus::Active,
        destination: None,
    }
}

fn event() -> AuditEvent {
    AuditEvent {
        event_id: "e".into(),
        at: 1,
        action: AuditAction::TokenExchange,
        outcome: AuditOutcome::Released,
        actor_issuer: None,
        actor_subject: None,
        target: None,
        grant_id: None,
        lease_id: Some("lease-1".into()),
        reason: None,
        token_fingerprint: None,
        old_version: None,
        new_version: None,
        request_id: None,
    }
}

#[tokio::test]
async fn failed_transaction_keeps_only_the_code_and_restarts_the_audit_chain() {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = |seen: Arc<Mutex<Vec<(String, String)>>>| {
        move |input: &aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput| {
            let audit = input.transact_items().last().unwrap().put().unwrap().item();
            let chain = audit["chain"].as_s().unwrap().clone();
            let seq = audit["seq"].as_n().unwrap().clone();
            seen.lock().unwrap().push((chain, seq));
            true
        }
    };
    let cancelled = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .match_requests(record(seen.clone()))
        .then_error(|| {
            TransactWriteItemsError::TransactionCanceledException(
                aws_sdk_dynamodb::types::error::TransactionCanceledException::builder()
                    .message("Transaction cancelled, please refer cancellation reasons for specific reasons [ConditionalCheckFailed, None]")
                    .meta(
                        aws_sdk_dynamodb::error::ErrorMetadata::builder()
                            .code("TransactionCanceledException")
                            .build(),
                    )
                    .build(),
            )
        });
    let ok = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .match_requests(record(seen.clone()))
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let ok2 = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .match_requests(record(seen.clone()))
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&cancelled, &ok, &ok2]);
    let ledger = DynamoLedger::new(client, "leases", "audit", "revocations");

    let err = ledger.record_release(&lease(), &event(), None).await.unwrap_err();
    assert_eq!(err.aws_code(), Some("TransactionCanceled:TransactionCanceled"));
    assert!(!err.to_string().contains("ConditionalCheckFailed"), "{err}");
    ledger.record_release(&lease(), &event(), None).await.unwrap();
    ledger.record_release(&lease(), &event(), None).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].1, "0");
    assert_ne!(seen[1].0, seen[0].0, "a failed write starts a new chain");
    assert_eq!((seen[1].1.as_str(), seen[2].1.as_str()), ("0", "1"));
    assert_eq!(seen[2].0, seen[1].0);
}

fn cancelled(reasons: &[&str]) -> TransactWriteItemsError {
    use aws_sdk_dynamodb::types::CancellationReason;
    TransactWriteItemsError::TransactionCanceledException(
        aws_sdk_dynamodb::types::error::TransactionCanceledException::builder()
            .set_cancellation_reasons(Some(
                reasons
                    .iter()
                    .map(|code| CancellationReason::builder().code(*code).build())
                    .collect(),
            ))
            .meta(
                aws_sdk_dynamodb::error::ErrorMetadata::builder()
                    .code("TransactionCanceledException")
                    .build(),
            )
            .build(),
    )
}

/// A release's items with the registry guard: lease, grant, subject fence, issuer fence, audit.
async fn release_answer(reasons: &'static [&'static str]) -> Result<()> {
    let rule = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .match_requests(|input| input.client_request_token().is_some_and(|t| t.len() == 36))
        .then_error(move || cancelled(reasons));
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&rule]);
    let ledger = DynamoLedger::new(client, "leases", "audit", "revocations").with_registry_guard("registry");
    ledger.record_release(&lease(), &event(), None).await
}

#[tokio::test]
async fn release_cancellations_are_read_by_their_reasons() {
    const N: &str = "None";
    const FAILED: &str = "ConditionalCheckFailed";
    let conflict = release_answer(&[N, N, "TransactionConflict", N, N]).await.unwrap_err();
    assert!(conflict.is_retryable(), "{conflict}");
    assert_eq!(conflict.client_error().status, http::StatusCode::SERVICE_UNAVAILABLE);
    let throttled = release_answer(&[N, "ThrottlingError", N, N, N]).await.unwrap_err();
    assert_eq!(throttled.client_error().status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(matches!(
        release_answer(&[N, N, FAILED, N, N]).await,
        Err(BrokerError::TokenRejected(TokenRejection::SubjectRevoked))
    ));
    assert!(matches!(
        release_answer(&[N, N, N, FAILED, N]).await,
        Err(BrokerError::TokenRejected(TokenRejection::IssuerDisabled))
    ));
    assert!(matches!(
        release_answer(&[N, FAILED, N, N, N]).await,
        Err(BrokerError::PolicyDenied(crate::error::PolicyDenial::GrantRevoked))
    ));
    // The lease already written by this very request (a lost response): it landed.
    release_answer(&[FAILED, N, N, N, FAILED]).await.unwrap();
    // Only the audit append failed: the chain moved under us; retryable, never a 4xx.
    let audit = release_answer(&[N, N, N, N, FAILED]).await.unwrap_err();
    assert!(
        audit.is_retryable() && audit.client_error().status.is_server_error(),
        "{audit}"
    );
}

#[test]
fn lease_items_carry_index_attributes_and_no_nulls() {
    let item = release_items::lease_item(&lease());
    assert_eq!(item["pk"].as_s().unwrap(), "LEASE#lease-1");
    assert_eq!(item["subject_key"].as_s().unwrap(), "https://idp#sub");
    assert!(item["active_shard"].as_s().unwrap().starts_with("ACTIVE#"));
    assert_eq!(item["ttl"].as_n().unwrap(), &(61 + LEASE_RETENTION_SECONDS).to_string());
    assert!(item.values().all(|v| !v.is_null()));
    let mut revoked = lease();
    revoked.status = LeaseStatus::Revoked;
    assert!(!release_items::lease_item(&revoked).contains_key("active_shard"));
    let back: Lease = from_item(item, "lease").unwrap();
    assert_eq!(back, lease());
}

/// No registry item is condition-checked by every release of one grant, secret and subject: over
/// many releases, each fence key is checked by about an eighth of them (a hot item would cap a
/// popular grant at DynamoDB's per-item throughput and make its releases cancel each other).
#[test]
fn releases_of_one_grant_secret_and_subject_spread_over_fence_shards() {
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, &[]);
    let ledger = DynamoLedger::new(client, "leases", "audit", "revocations").with_registry_guard("registry");
    let releases = 400;
    let mut checked: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..releases {
        let mut lease = lease();
        lease.lease_id = uuid::Uuid::new_v4().to_string();
        lease.kind = crate::domain::TargetKind::Secret;
        lease.target = "secret-1".into();
        let (items, _) = ledger.release_items(&lease, None).unwrap();
        for item in items {
            if let Some(check) = item.condition_check() {
                let pk = check.key()["pk"].as_s().unwrap().clone();
                *checked.entry(pk).or_default() += 1;
            }
        }
    }
    // grant, secret, subject and issuer fences, 8 shards each.
    assert_eq!(checked.len(), 4 * keys::FENCE_SHARDS as usize, "{checked:?}");
    let busiest = checked.values().max().copied().unwrap_or_default();
    assert!(
        busiest < releases / 4,
        "the busiest item is checked by {busiest} of {releases} releases"
    );
    assert!(checked.keys().any(|k| k.contains("#grant#")) && checked.keys().any(|k| k.contains("#secret#")));
}

/// The key a release checks is the key a revoker raises: one definition of a fence's storage
/// name, whether the fence is owned (the revoker's) or borrowed from a lease (a release's).
#[test]
fn a_fence_has_one_storage_key_whoever_names_it() {
    use crate::domain::Fence;
    let fences = [
        (
            Fence::Subject {
                issuer: "https://idp".into(),
                subject: "repo:o/r#x".into(),
            },
            "subject#https://idp#repo:o/r#x",
        ),
        (Fence::Issuer("https://idp".into()), "issuer#https://idp"),
        (Fence::Grant("g-1".into()), "grant#g-1"),
        (Fence::Secret("s-1".into()), "secret#s-1"),
    ];
    for (fence, scope) in fences {
        assert_eq!(fence.scope(), scope);
        for shard in [0, 7] {
            assert_eq!(keys::fence_pk(fence.as_ref(), shard), format!("FENCE#{shard}#{scope}"));
        }
    }
}

proptest::proptest! {
    #[test]
    fn release_keys_are_what_format_writes(id in ".{0,40}", other in ".{0,40}", shard in 0..keys::FENCE_SHARDS) {
        proptest::prop_assert_eq!(keys::lease_pk(&id), format!("LEASE#{id}"));
        proptest::prop_assert_eq!(keys::replay_pk(&id), format!("REPLAY#{id}"));
        proptest::prop_assert_eq!(keys::subject_key(&id, &other), format!("{id}#{other}"));
        let h = id.bytes().fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(b as u32));
        proptest::prop_assert_eq!(keys::active_shard(&id), format!("ACTIVE#{}", h % ACTIVE_SHARDS));
        let fence = crate::domain::FenceRef::Subject { issuer: &id, subject: &other };
        proptest::prop_assert_eq!(keys::fence_pk(fence, shard), format!("FENCE#{shard}#subject#{id}#{other}"));
    }
}
