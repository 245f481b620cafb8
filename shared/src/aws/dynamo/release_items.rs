//! What every release writes: its lease's item and its audit event's (with their keys, link and
//! index attributes), and the transaction items that carry them and its fence checks. They are on
//! the path of every request, so they are built by hand rather than through `serde_dynamo` (whose
//! generic serializer cost more than the rest of the item building together) or the SDK's builder
//! chains.
//!
//! A record's own attributes are exactly what `serde_dynamo::to_item` makes of it (absent and
//! `None` fields left out, `Vec<String>` as a list of strings, enums by their serde names), so
//! records are read back with `from_item` as before; the tests below hold the two to that for
//! arbitrary values, and each in-place item to what the builders make.

use super::audit_query::{INDEX_ATTRIBUTES, index_attributes};
use super::{Item, LEASE_RETENTION_SECONDS, build_err, keys, n, s};
use crate::audit::ChainLink;
use crate::domain::{AuditEvent, FenceRef, Lease, LeaseStatus};
use crate::error::Result;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use std::collections::HashMap;
use std::sync::LazyLock;

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

/// A put of `item` into `table`, on condition that no item has its key yet.
pub(super) fn new_put(table: &str, item: Item, key_attr: &str) -> Result<Put> {
    let mut put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .build()
        .map_err(build_err)?;
    put.condition_expression = Some("attribute_not_exists(#k)".into());
    put.expression_attribute_names = Some(HashMap::from([("#k".into(), key_attr.into())]));
    Ok(put)
}

/// Appends [`new_put`] of `item`.
pub(super) fn push_put_new(items: &mut Vec<TransactWriteItem>, table: &str, item: Item, key_attr: &str) -> Result<()> {
    push_blank(items).put = Some(new_put(table, item, key_attr)?);
    Ok(())
}

/// Appends a check that `fence` is not raised at `shard`.
pub(super) fn push_fence_check(
    items: &mut Vec<TransactWriteItem>,
    registry: &str,
    fence: FenceRef<'_>,
    shard: u32,
) -> Result<()> {
    let key = filled(
        &FENCE_KEY_TEMPLATE,
        |name| {
            Some(if name == "pk" {
                s(keys::fence_pk(fence, shard))
            } else {
                s(keys::FENCE_SK)
            })
        },
        [],
    );
    let check = ConditionCheck::builder()
        .table_name(registry)
        .set_key(Some(key))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .map_err(build_err)?;
    push_blank(items).condition_check = Some(check);
    Ok(())
}

// The items are filled in from templates that hold the attributes a release's item has, as
// `NULL` placeholders. Cloning a template copies its table slot by slot, and filling visits each
// slot; inserting would hash every name (the SDK's item type fixes std's SipHash), which cost more
// than the rest of building a release's forty-odd attributes. A template attribute without a value
// is removed; the few attributes a release does not have are inserted when present.

/// Every attribute of a new lease's item but the optional ones (inserted when present).
const LEASE_TEMPLATE_ATTRIBUTES: [&str; 18] = [
    "lease_id",
    "kind",
    "issuer",
    "subject",
    "grant_id",
    "target",
    "environment",
    "scope",
    "subject_token_fingerprint",
    "key_id",
    "issued_at",
    "expires_at",
    "status",
    "pk",
    "sk",
    "subject_key",
    "ttl",
    "active_shard",
];

/// The attributes of a release's audit item besides its index attributes: the event's (a
/// denial's reason and a rotation's versions are inserted when present) and its link's (a chain's
/// opening is inserted when present).
const AUDIT_TEMPLATE_ATTRIBUTES: [&str; 16] = [
    "event_id",
    "at",
    "action",
    "outcome",
    "actor_issuer",
    "actor_subject",
    "target",
    "grant_id",
    "lease_id",
    "token_fingerprint",
    "request_id",
    "chain",
    "seq",
    "prev_hash",
    "hash",
    "sig",
];

fn template(names: &[&str]) -> Item {
    names
        .iter()
        .map(|name| (name.to_string(), AttributeValue::Null(true)))
        .collect()
}

static LEASE_TEMPLATE: LazyLock<Item> = LazyLock::new(|| template(&LEASE_TEMPLATE_ATTRIBUTES));

/// A fence's key (every release checks three or four).
static FENCE_KEY_TEMPLATE: LazyLock<Item> = LazyLock::new(|| template(&["pk", "sk"]));

static AUDIT_TEMPLATE: LazyLock<Item> =
    LazyLock::new(|| template(&[AUDIT_TEMPLATE_ATTRIBUTES.as_slice(), INDEX_ATTRIBUTES].concat()));

/// `template` with each attribute's value from `value_of`, or removed when it has none, and then
/// each of `others` that has a value.
fn filled<'a>(
    template: &Item,
    mut value_of: impl FnMut(&str) -> Option<AttributeValue>,
    others: impl IntoIterator<Item = (&'a str, Option<AttributeValue>)>,
) -> Item {
    let mut item = template.clone();
    item.retain(|name, slot| match value_of(name) {
        Some(value) => {
            *slot = value;
            true
        }
        None => false,
    });
    for (name, value) in others {
        if let Some(value) = value {
            item.insert(name.to_string(), value);
        }
    }
    item
}

/// A lease as its item: its attributes, keys and index attributes.
pub(super) fn lease_item(lease: &Lease) -> Item {
    let text = |value: &Option<String>| value.as_ref().map(s);
    filled(
        &LEASE_TEMPLATE,
        |name| {
            Some(match name {
                "lease_id" => s(&lease.lease_id),
                "kind" => s(lease.kind.as_str()),
                "issuer" => s(&lease.issuer),
                "subject" => s(&lease.subject),
                "grant_id" => s(&lease.grant_id),
                "target" => s(&lease.target),
                "environment" => s(&lease.environment),
                "scope" => AttributeValue::L(lease.scope.iter().map(s).collect()),
                "subject_token_fingerprint" => s(&lease.subject_token_fingerprint),
                "key_id" => s(&lease.key_id),
                "issued_at" => n(lease.issued_at),
                "expires_at" => n(lease.expires_at),
                "status" => s(lease.status.as_str()),
                "pk" => s(keys::lease_pk(&lease.lease_id)),
                "sk" => s(keys::LEASE_SK),
                "subject_key" => s(keys::subject_key(&lease.issuer, &lease.subject)),
                "ttl" => n(lease.expires_at + LEASE_RETENTION_SECONDS),
                // Only active leases are on the sparse expiry index.
                "active_shard" if lease.status == LeaseStatus::Active => s(keys::active_shard(&lease.lease_id)),
                _ => return None,
            })
        },
        [
            ("secret_version", text(&lease.secret_version)),
            ("aws_access_key_id", text(&lease.aws_access_key_id)),
            ("destination", text(&lease.destination)),
        ],
    )
}

/// An audit event as its item: its attributes, its chain link's and its index attributes.
pub(crate) fn audit_item(event: &AuditEvent, link: &ChainLink) -> Item {
    let mut index = index_attributes(event, &link.chain);
    let text = |value: &Option<String>| value.as_ref().map(s);
    let opening = link.opening.as_ref();
    let certificate = opening.filter(|opening| !opening.certificate.is_empty());
    filled(
        &AUDIT_TEMPLATE,
        |name| match name {
            "event_id" => Some(s(&event.event_id)),
            "at" => Some(n(event.at)),
            "action" => Some(s(event.action.as_str())),
            "outcome" => Some(s(event.outcome.as_str())),
            "actor_issuer" => text(&event.actor_issuer),
            "actor_subject" => text(&event.actor_subject),
            "target" => text(&event.target),
            "grant_id" => text(&event.grant_id),
            "lease_id" => text(&event.lease_id),
            "token_fingerprint" => text(&event.token_fingerprint),
            "request_id" => text(&event.request_id),
            "chain" => Some(s(&link.chain)),
            "seq" => Some(n(link.seq)),
            "prev_hash" => Some(s(&link.prev_hash)),
            "hash" => Some(s(&link.hash)),
            "sig" => Some(s(&link.signature)),
            _ => {
                let at = index.iter().position(|(index_name, _)| *index_name == name)?;
                Some(index.swap_remove(at).1)
            }
        },
        [
            ("reason", text(&event.reason)),
            ("old_version", text(&event.old_version)),
            ("new_version", text(&event.new_version)),
            ("chain_key", opening.map(|opening| s(&opening.public_key))),
            ("chain_cert", certificate.map(|opening| s(&opening.certificate))),
            (
                "chain_cert_key",
                certificate.map(|opening| s(&opening.certificate_key_id)),
            ),
        ],
    )
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
                // Times a lease can have (its item's ttl adds the retention period).
                -(1i64 << 40)..(1i64 << 40),
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

    fn link() -> impl Strategy<Value = ChainLink> {
        let certificate = prop_oneof![Just(String::new()), text()];
        let opening = proptest::option::of((text(), certificate, text()));
        (text(), any::<i64>(), text(), text(), text(), opening).prop_map(
            |(chain, seq, prev_hash, hash, signature, opening)| ChainLink {
                chain,
                seq,
                prev_hash,
                hash,
                signature,
                opening: opening.map(
                    |(public_key, certificate, certificate_key_id)| crate::audit::ChainOpening {
                        public_key,
                        certificate,
                        certificate_key_id,
                    },
                ),
            },
        )
    }

    proptest! {
        #[test]
        fn a_lease_item_is_its_serde_dynamo_form_and_its_keys(lease in lease()) {
            let mut expected = reference(&lease);
            expected.insert("pk".into(), s(keys::lease_pk(&lease.lease_id)));
            expected.insert("sk".into(), s(keys::LEASE_SK));
            expected.insert("subject_key".into(), s(keys::subject_key(&lease.issuer, &lease.subject)));
            expected.insert("ttl".into(), n(lease.expires_at + LEASE_RETENTION_SECONDS));
            if lease.status == LeaseStatus::Active {
                expected.insert("active_shard".into(), s(keys::active_shard(&lease.lease_id)));
            }
            prop_assert_eq!(lease_item(&lease), expected);
        }

        #[test]
        fn an_audit_item_is_its_serde_dynamo_form_its_link_and_its_index(event in audit_event(), link in link()) {
            let mut expected = reference(&event);
            expected.insert("chain".into(), s(&link.chain));
            expected.insert("seq".into(), n(link.seq));
            expected.insert("prev_hash".into(), s(&link.prev_hash));
            expected.insert("hash".into(), s(&link.hash));
            expected.insert("sig".into(), s(&link.signature));
            if let Some(opening) = &link.opening {
                expected.insert("chain_key".into(), s(&opening.public_key));
                if !opening.certificate.is_empty() {
                    expected.insert("chain_cert".into(), s(&opening.certificate));
                    expected.insert("chain_cert_key".into(), s(&opening.certificate_key_id));
                }
            }
            expected.extend(index_attributes(&event, &link.chain).into_iter().map(|(name, value)| (name.to_string(), value)));
            prop_assert_eq!(audit_item(&event, &link), expected);
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
