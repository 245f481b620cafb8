//! The two items every release writes (its lease and its audit event), built attribute by
//! attribute rather than through `serde_dynamo`: they are on the path of every request, and the
//! generic serializer cost more than the rest of the item building together.
//!
//! The result is exactly what `serde_dynamo::to_item` makes of the same value (absent and `None`
//! fields left out, `Vec<String>` as a list of strings, enums by their serde names), so records are
//! read back with `from_item` as before; the tests below hold the two to that for arbitrary values.

use super::{Item, build_err, keys, n, s};
use crate::domain::{AuditEvent, FenceRef, Lease};
use crate::error::Result;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use std::collections::HashMap;

// A release's transaction items are built in the vector that carries them, their members set in
// place. A `TransactWriteItem` is 888 bytes and, under `opt-level = "s"`, every builder call takes
// and returns its builder through a `memcpy` call: built the usual way (`builder().put(..)
// .build()`, returned in a `Result`, pushed), a release's items cost about 60 kB of copies
// (`perf probe` on memmove), more than building their attributes.

/// Appends an item with no action, to be given one in place.
fn push_blank(items: &mut Vec<TransactWriteItem>) -> &mut TransactWriteItem {
    items.push(TransactWriteItem::builder().build());
    let last = items.len() - 1;
    &mut items[last]
}

/// Appends a put of `item` into `table`, on condition that no item has its key yet.
pub(super) fn push_put_new(items: &mut Vec<TransactWriteItem>, table: &str, item: Item, key_attr: &str) -> Result<()> {
    let mut put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .build()
        .map_err(build_err)?;
    put.condition_expression = Some("attribute_not_exists(#k)".into());
    put.expression_attribute_names = Some(HashMap::from([("#k".into(), key_attr.into())]));
    push_blank(items).put = Some(put);
    Ok(())
}

/// Appends a check that `fence` is not raised at `shard`.
pub(super) fn push_fence_check(
    items: &mut Vec<TransactWriteItem>,
    registry: &str,
    fence: FenceRef<'_>,
    shard: u32,
) -> Result<()> {
    let key = Item::from([
        ("pk".to_string(), s(keys::fence_pk(fence, shard))),
        ("sk".to_string(), s(keys::FENCE_SK)),
    ]);
    let check = ConditionCheck::builder()
        .table_name(registry)
        .set_key(Some(key))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .map_err(build_err)?;
    push_blank(items).condition_check = Some(check);
    Ok(())
}

/// A lease's own attributes (the caller adds its keys and index attributes).
pub(super) fn lease_attributes(lease: &Lease, room_for: usize) -> Item {
    let mut item = Item::with_capacity(17 + room_for);
    let mut put = |name: &str, value: AttributeValue| {
        item.insert(name.to_string(), value);
    };
    put("lease_id", s(&lease.lease_id));
    put("kind", s(lease.kind.as_str()));
    put("issuer", s(&lease.issuer));
    put("subject", s(&lease.subject));
    put("grant_id", s(&lease.grant_id));
    put("target", s(&lease.target));
    put("environment", s(&lease.environment));
    put("scope", AttributeValue::L(lease.scope.iter().map(s).collect()));
    put("subject_token_fingerprint", s(&lease.subject_token_fingerprint));
    put("key_id", s(&lease.key_id));
    if let Some(version) = &lease.secret_version {
        put("secret_version", s(version));
    }
    if let Some(key) = &lease.aws_access_key_id {
        put("aws_access_key_id", s(key));
    }
    put("issued_at", n(lease.issued_at));
    put("expires_at", n(lease.expires_at));
    put("status", s(lease.status.as_str()));
    if let Some(destination) = &lease.destination {
        put("destination", s(destination));
    }
    item
}

/// An audit event's own attributes (the audit writer adds its chain link and index attributes).
pub(super) fn event_attributes(event: &AuditEvent, room_for: usize) -> Item {
    let mut item = Item::with_capacity(14 + room_for);
    let mut put = |name: &str, value: Option<AttributeValue>| {
        if let Some(value) = value {
            item.insert(name.to_string(), value);
        }
    };
    let text = |value: &Option<String>| value.as_ref().map(s);
    put("event_id", Some(s(&event.event_id)));
    put("at", Some(n(event.at)));
    put("action", Some(s(event.action.as_str())));
    put("outcome", Some(s(event.outcome.as_str())));
    put("actor_issuer", text(&event.actor_issuer));
    put("actor_subject", text(&event.actor_subject));
    put("target", text(&event.target));
    put("grant_id", text(&event.grant_id));
    put("lease_id", text(&event.lease_id));
    put("reason", text(&event.reason));
    put("token_fingerprint", text(&event.token_fingerprint));
    put("old_version", text(&event.old_version));
    put("new_version", text(&event.new_version));
    put("request_id", text(&event.request_id));
    item
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::strategies::{ACTIONS, OUTCOMES, audit_event, text};
    use crate::domain::{LeaseStatus, TargetKind};
    use proptest::prelude::*;

    /// What the generic path makes of a value: `serde_dynamo`, `NULL`s dropped (as `to_item` does).
    fn reference<T: serde::Serialize>(value: &T) -> Item {
        let mut item: Item = serde_dynamo::to_item(value).unwrap();
        item.retain(|_, v| !matches!(v, AttributeValue::Null(_)));
        item
    }

    fn lease() -> impl Strategy<Value = Lease> {
        (
            (text(), text(), text(), text(), text(), text(), text(), text()),
            (
                prop::collection::vec(text(), 0..4),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                any::<i64>(),
                any::<i64>(),
                0..3usize,
                0..3usize,
            ),
        )
            .prop_map(
                |(
                    (lease_id, issuer, subject, grant_id, target, environment, fingerprint, key_id),
                    (scope, secret_version, aws_access_key_id, destination, issued_at, expires_at, kind, status),
                )| Lease {
                    lease_id,
                    kind: [TargetKind::Jwt, TargetKind::Secret, TargetKind::AwsRole][kind],
                    issuer,
                    subject,
                    grant_id,
                    target,
                    environment,
                    scope,
                    subject_token_fingerprint: fingerprint,
                    key_id,
                    secret_version,
                    aws_access_key_id,
                    issued_at,
                    expires_at,
                    status: [LeaseStatus::Active, LeaseStatus::Revoked, LeaseStatus::Expired][status],
                    destination,
                },
            )
    }

    proptest! {
        #[test]
        fn a_lease_item_is_what_serde_dynamo_makes_of_it(lease in lease()) {
            prop_assert_eq!(lease_attributes(&lease, 0), reference(&lease));
        }

        #[test]
        fn an_event_item_is_what_serde_dynamo_makes_of_it(event in audit_event()) {
            prop_assert_eq!(event_attributes(&event, 0), reference(&event));
        }
    }

    #[test]
    fn items_built_in_place_are_what_the_builders_make() {
        let item = Item::from([("pk".to_string(), s("LEASE#1")), ("n".to_string(), n(7))]);
        let mut items = Vec::new();
        push_put_new(&mut items, "leases", item.clone(), "pk").unwrap();
        push_fence_check(&mut items, "registry", FenceRef::Issuer("https://idp"), 3).unwrap();
        let put = Put::builder()
            .table_name("leases")
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", "pk")
            .build()
            .unwrap();
        let check = ConditionCheck::builder()
            .table_name("registry")
            .key("pk", s(keys::fence_pk(FenceRef::Issuer("https://idp"), 3)))
            .key("sk", s(keys::FENCE_SK))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .unwrap();
        assert_eq!(
            items,
            [
                TransactWriteItem::builder().put(put).build(),
                TransactWriteItem::builder().condition_check(check).build(),
            ]
        );
    }

    #[test]
    fn every_action_and_outcome_is_named_as_serde_names_it() {
        for action in ACTIONS {
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
        for outcome in OUTCOMES {
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
        }
    }
}
