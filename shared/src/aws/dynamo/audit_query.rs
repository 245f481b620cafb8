//! Indexed audit queries: by subject, target, grant and day, never a Scan.
//!
//! Every audit event carries `at_id` = `<at, 12 digits>#<event id>`: unique and ordered by time,
//! the sort key of every audit index (a page ends at an exact event, so pagination neither skips
//! nor repeats one, even among events of the same second). And, when the event names them,
//! `subject_key`, `target_key` and `grant_key` = `<value>#<shard>`, the partition keys of
//! `by-subject`, `by-target` and `by-grant` (sparse: an event without a subject is not in
//! `by-subject`). The shard comes from the writer's chain, so one popular subject's events spread
//! over [`QUERY_SHARDS`] index partitions instead of one (a GSI partition takes ~1,000 writes/s,
//! and a throttled index throttles the releases that write to it). `by-time` (`time_shard` =
//! `<day>#<shard>`) serves queries with only a time window, and the audit digests.
//!
//! A query reads the shards of the most selective index the filter names (subject, then grant,
//! then target, else the days of the window) and merges them in time order, reading each shard in
//! small chunks and only when its next item could be the page's next: items read stay near the
//! page size plus one chunk per shard, whatever the table holds. Other conditions of the filter
//! are a `FilterExpression` on those reads.

use super::{Item, s};
use crate::domain::AuditEvent;
use crate::error::{BrokerError, Result};
use crate::json_text::push_padded;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const BY_SUBJECT_INDEX: &str = "by-subject";
pub const BY_TARGET_INDEX: &str = "by-target";
pub const BY_GRANT_INDEX: &str = "by-grant";
pub const BY_TIME_INDEX: &str = "by-time";
/// Index partitions per subject, target or grant.
pub const QUERY_SHARDS: u8 = 8;
/// Index partitions per day (`by-time`).
pub const TIME_SHARDS: u8 = 16;
/// Longest window of a query by time alone: bounds the days (16 queries each) one page may visit.
pub const MAX_WINDOW_DAYS: i64 = 400;
/// Values longer than this are indexed by their SHA-256 (index keys hold at most 2,048 bytes).
const MAX_RAW_KEY: usize = 1_024;

/// The first byte of the SHA-256 of a chain id: which shard its events go to.
fn chain_byte(chain: &str) -> u8 {
    crate::crypto::sha256(chain.as_bytes())[0]
}

/// The `by-time` partition of an event of `chain` at `at`.
pub fn time_shard(at: i64, chain: &str) -> String {
    time_shard_of(at, chain_byte(chain))
}

fn time_shard_of(at: i64, chain_byte: u8) -> String {
    let mut shard = String::with_capacity(24);
    shard.push_str(itoa::Buffer::new().format(at.div_euclid(86_400)));
    shard.push('#');
    push_padded(&mut shard, (chain_byte % TIME_SHARDS).into(), 2);
    shard
}

/// The sort key of every audit index: time, then event id (unique).
pub fn at_id(at: i64, event_id: &str) -> String {
    let mut id = String::with_capacity(13 + event_id.len());
    push_padded(&mut id, at.max(0).unsigned_abs(), 12);
    id.push('#');
    id.push_str(event_id);
    id
}

/// The lowest `at_id` at `at` (inclusive bound).
pub(super) fn at_id_from(at: i64) -> String {
    format!("{:012}", at.max(0))
}

/// Above every `at_id` at `at` (inclusive bound: event ids are hex and '-').
pub(super) fn at_id_until(at: i64) -> String {
    format!("{:012}#~", at.max(0))
}

/// Just above `at_id` (every `at_id` has the same length, so this is below the next one).
fn after(at_id: &str) -> String {
    format!("{at_id} ")
}

fn index_value(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_RAW_KEY {
        value.into()
    } else {
        format!("sha256:{}", crate::crypto::sha256_hex(value.as_bytes())).into()
    }
}

fn sharded(value: &str, shard: u8) -> String {
    [&index_value(value), "#", itoa::Buffer::new().format(shard)].concat()
}

/// The attributes [`index_attributes`] may set.
pub const INDEX_ATTRIBUTES: &[&str] = &["time_shard", "at_id", "subject_key", "target_key", "grant_key"];

/// The index attributes of an event of `chain` (stored beside the event, checked by `audit verify`).
pub fn index_attributes(event: &AuditEvent, chain: &str) -> Vec<(&'static str, AttributeValue)> {
    // Hashed once for both (every audit event is indexed).
    let chain_byte = chain_byte(chain);
    let shard = chain_byte % QUERY_SHARDS;
    let mut attributes = vec![
        ("time_shard", s(time_shard_of(event.at, chain_byte))),
        ("at_id", s(at_id(event.at, &event.event_id))),
    ];
    for (name, value) in [
        ("subject_key", event.actor_subject.as_deref()),
        ("target_key", event.target.as_deref()),
        ("grant_key", event.grant_id.as_deref()),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            attributes.push((name, s(sharded(value, shard))));
        }
    }
    attributes
}

/// What to look for: every given condition must hold. Times are inclusive, in epoch seconds.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    pub subject: Option<String>,
    /// Exact targets: any of them matches (a secret is recorded as `<id>` or `secret:<id>`).
    pub targets: Vec<String>,
    pub grant: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// One page of events in time order, and what reading it cost.
#[derive(Debug, Default)]
pub struct AuditPage {
    pub items: Vec<Item>,
    /// Present when the page is full: pass it back for the next page (which may be empty).
    pub next_token: Option<String>,
    /// Items DynamoDB read (`ScannedCount`), and Query calls made.
    pub items_read: usize,
    pub queries: usize,
}

/// Where a page is read from: index partitions, grouped so that groups are in time order (the
/// days of a time-only query; one group for the other indexes).
struct Plan {
    index: &'static str,
    key: &'static str,
    groups: Vec<(Option<i64>, Vec<String>)>,
    filter: Vec<(&'static str, &'static str, Vec<String>)>,
}

fn plan(query: &AuditQuery, now: i64) -> Result<Plan> {
    let shards = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .flat_map(|v| (0..QUERY_SHARDS).map(move |shard| sharded(v, shard)))
            .collect()
    };
    let subject: Vec<String> = query.subject.iter().cloned().collect();
    let grant: Vec<String> = query.grant.iter().cloned().collect();
    let mut filter = vec![
        ("actor_subject", ":subject", subject.clone()),
        ("grant_id", ":grant", grant.clone()),
        ("target", ":target", query.targets.clone()),
    ];
    let (index, key, partitions) = if !subject.is_empty() {
        filter.remove(0);
        (BY_SUBJECT_INDEX, "subject_key", shards(&subject))
    } else if !grant.is_empty() {
        filter.remove(1);
        (BY_GRANT_INDEX, "grant_key", shards(&grant))
    } else if !query.targets.is_empty() {
        filter.remove(2);
        (BY_TARGET_INDEX, "target_key", shards(&query.targets))
    } else {
        let until = query.until.unwrap_or(now);
        let since = query.since.unwrap_or(until - 86_400);
        let (first, last) = (since.div_euclid(86_400), until.div_euclid(86_400));
        if last - first >= MAX_WINDOW_DAYS {
            return Err(BrokerError::InvalidRequest(
                "a query by time alone spans at most 400 days: narrow --since/--until or add --subject, --target or --grant",
            ));
        }
        let groups = (first..=last)
            .map(|day| {
                let partitions = (0..TIME_SHARDS).map(|shard| format!("{day}#{shard:02}")).collect();
                (Some(day), partitions)
            })
            .collect();
        filter.retain(|(_, _, values)| !values.is_empty());
        return Ok(Plan {
            index: BY_TIME_INDEX,
            key: "time_shard",
            groups,
            filter,
        });
    };
    filter.retain(|(_, _, values)| !values.is_empty());
    Ok(Plan {
        index,
        key,
        groups: vec![(None, partitions)],
        filter,
    })
}

fn encode_token(at_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(at_id)
}

fn decode_token(token: &str) -> Result<String> {
    let invalid = || BrokerError::InvalidRequest("--next-token is not one that a query returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let at_id = String::from_utf8(bytes).map_err(|_| invalid())?;
    let well_formed = at_id.len() == 49
        && at_id.as_bytes()[12] == b'#'
        && at_id[..12].bytes().all(|b| b.is_ascii_digit())
        && at_id[13..].bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if well_formed { Ok(at_id) } else { Err(invalid()) }
}

fn at_id_of(item: &Item) -> &str {
    item.get("at_id").and_then(|v| v.as_s().ok()).map_or("", String::as_str)
}

/// Reads audit pages from the audit table's indexes.
pub struct AuditQueries {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl AuditQueries {
    pub fn new(client: aws_sdk_dynamodb::Client, audit_table: &str) -> Self {
        Self {
            client,
            table: audit_table.into(),
        }
    }

    /// Up to `limit` events matching `query`, oldest first, after `next_token` if given.
    /// Without a subject, target or grant, the window defaults to the day before `until` (or now).
    pub async fn page(
        &self,
        query: &AuditQuery,
        limit: usize,
        next_token: Option<&str>,
        now: i64,
    ) -> Result<AuditPage> {
        if !(1..=1_000).contains(&limit) {
            return Err(BrokerError::InvalidRequest("--limit is between 1 and 1000"));
        }
        if let (Some(since), Some(until)) = (query.since, query.until)
            && since > until
        {
            return Err(BrokerError::InvalidRequest("--since is after --until"));
        }
        let plan = plan(query, now)?;
        let cursor = next_token.map(decode_token).transpose()?;
        let lower = match (&cursor, query.since) {
            (Some(c), Some(since)) => after(c).max(at_id_from(since)),
            (Some(c), None) => after(c),
            (None, Some(since)) => at_id_from(since),
            (None, None) => at_id_from(0),
        };
        let upper = query.until.map_or_else(|| at_id_until(i64::MAX / 2), at_id_until);
        let mut page = AuditPage::default();
        for (day, partitions) in &plan.groups {
            // Days wholly before the cursor hold nothing after it.
            if let (Some(day), Some(c)) = (day, &cursor)
                && at_id_until((day + 1) * 86_400 - 1) < *c
            {
                continue;
            }
            let want = limit - page.items.len();
            let merged = self.merge(&plan, partitions, &lower, &upper, want, &mut page).await?;
            page.items.extend(merged);
            if page.items.len() == limit {
                break;
            }
        }
        if page.items.len() == limit {
            page.next_token = page.items.last().map(|i| encode_token(at_id_of(i)));
        }
        Ok(page)
    }

    /// The first `want` items of `partitions` in time order: a k-way merge that reads each partition
    /// in small chunks, refilling one only when its next item could be the next in order. Items read
    /// stay near `want` + one chunk per partition, however the events spread over the shards.
    async fn merge(
        &self,
        plan: &Plan,
        partitions: &[String],
        lower: &str,
        upper: &str,
        want: usize,
        page: &mut AuditPage,
    ) -> Result<Vec<Item>> {
        let chunk = (want.div_ceil(partitions.len()) + 1).clamp(2, 1_000);
        let mut cursors: Vec<Partition> = partitions.iter().map(|p| Partition::new(p)).collect();
        let mut merged = Vec::new();
        while merged.len() < want {
            // A partition with nothing buffered and more to read could hold the next item.
            if cursors.iter().any(|c| c.buffer.is_empty() && !c.done) {
                let refills = cursors
                    .iter_mut()
                    .filter(|c| c.buffer.is_empty() && !c.done)
                    .map(|c| self.read_chunk(plan, c, lower, upper, chunk));
                for result in futures::future::join_all(refills).await {
                    page.items_read += result?;
                    page.queries += 1;
                }
                continue;
            }
            let next = cursors
                .iter_mut()
                .filter(|c| !c.buffer.is_empty())
                .min_by(|a, b| at_id_of(&a.buffer[0]).cmp(at_id_of(&b.buffer[0])));
            match next.and_then(|c| c.buffer.pop_front()) {
                Some(item) => merged.push(item),
                None => break, // every partition read to its end
            }
        }
        Ok(merged)
    }

    /// One Query of a partition: up to `chunk` items after its last read, in [lower, upper].
    /// Returns the items DynamoDB read.
    async fn read_chunk(
        &self,
        plan: &Plan,
        cursor: &mut Partition,
        lower: &str,
        upper: &str,
        chunk: usize,
    ) -> Result<usize> {
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(plan.index)
            .key_condition_expression(format!("{} = :p AND at_id BETWEEN :lower AND :upper", plan.key))
            .expression_attribute_values(":p", s(&cursor.key))
            .expression_attribute_values(":lower", s(lower))
            .expression_attribute_values(":upper", s(upper))
            .limit(chunk as i32)
            .set_exclusive_start_key(cursor.start.take());
        let mut clauses = Vec::new();
        for (attribute, placeholder, values) in &plan.filter {
            let mut options = Vec::new();
            for (i, value) in values.iter().enumerate() {
                let name = format!("{placeholder}{i}");
                options.push(format!("{attribute} = {name}"));
                request = request.expression_attribute_values(name, s(value));
            }
            clauses.push(format!("({})", options.join(" OR ")));
        }
        if !clauses.is_empty() {
            request = request.filter_expression(clauses.join(" AND "));
        }
        let output = request
            .send()
            .await
            .map_err(|e| BrokerError::aws("dynamodb", "Query", &e))?;
        let read = output.scanned_count() as usize;
        cursor.buffer.extend(output.items.unwrap_or_default());
        cursor.start = output.last_evaluated_key;
        cursor.done = cursor.start.is_none();
        Ok(read)
    }
}

/// Where the merge is in one index partition.
struct Partition {
    key: String,
    buffer: std::collections::VecDeque<Item>,
    start: Option<std::collections::HashMap<String, AttributeValue>>,
    done: bool,
}

impl Partition {
    fn new(key: &str) -> Self {
        Self {
            key: key.to_string(),
            buffer: Default::default(),
            start: None,
            done: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn index_keys_are_what_format_writes(at in any::<i64>(), id in "[-0-9a-f]{0,40}", shard in any::<u8>(), chain in ".{0,20}") {
            prop_assert_eq!(at_id(at, &id), format!("{:012}#{id}", at.max(0)));
            prop_assert_eq!(time_shard(at, &chain), format!("{}#{:02}", at.div_euclid(86_400), chain_byte(&chain) % TIME_SHARDS));
            prop_assert_eq!(sharded(&id, shard), format!("{}#{shard}", index_value(&id)));
        }

        #[test]
        fn an_events_time_shard_is_by_its_time_and_chain(event in crate::domain::strategies::audit_event(), chain in ".{0,20}") {
            let attributes = index_attributes(&event, &chain);
            prop_assert_eq!(&attributes[0], &("time_shard", s(time_shard(event.at, &chain))));
        }
    }

    #[test]
    fn at_ids_order_by_time_then_id_and_bounds_enclose_them() {
        let id = "0190a8c4-1234-7abc-8def-0123456789ab";
        let a = at_id(1_700_000_000, id);
        assert_eq!(a.len(), 49);
        assert!(at_id_from(1_700_000_000) <= a && a <= at_id_until(1_700_000_000));
        assert!(at_id_until(1_699_999_999) < a && a < at_id_from(1_700_000_001));
        let next = at_id(1_700_000_000, "0190a8c4-1234-7abc-8def-0123456789ac");
        assert!(a < after(&a) && after(&a) < next);
        assert_eq!(decode_token(&encode_token(&a)).unwrap(), a);
        assert!(decode_token("not-a-token").is_err());
        assert!(decode_token(&encode_token("1 OR 1=1")).is_err());
    }

    #[test]
    fn the_most_selective_index_is_read_and_the_rest_filters() {
        let query = AuditQuery {
            subject: Some("repo:o/r".into()),
            targets: vec!["db".into(), "secret:db".into()],
            ..Default::default()
        };
        let plan = plan(&query, 0).unwrap();
        assert_eq!((plan.index, plan.groups[0].1.len()), (BY_SUBJECT_INDEX, 8));
        assert_eq!(plan.filter.len(), 1);
        assert_eq!(plan.filter[0].0, "target");
        let by_time = plan_for_days(3);
        assert_eq!((by_time.index, by_time.groups.len()), (BY_TIME_INDEX, 4));
        assert!(
            super::plan(
                &AuditQuery {
                    since: Some(0),
                    until: Some(MAX_WINDOW_DAYS * 86_400),
                    ..Default::default()
                },
                0
            )
            .is_err()
        );
    }

    fn plan_for_days(days: i64) -> Plan {
        plan(
            &AuditQuery {
                since: Some(0),
                until: Some(days * 86_400),
                ..Default::default()
            },
            0,
        )
        .unwrap()
    }

    #[test]
    fn long_values_are_indexed_by_their_hash_and_shards_follow_the_chain() {
        let long = "x".repeat(5_000);
        let event = AuditEvent {
            event_id: "id".into(),
            actor_subject: Some(long.clone()),
            target: Some("t".into()),
            ..AuditEvent::new(
                crate::domain::AuditAction::TokenExchange,
                crate::domain::AuditOutcome::Released,
                86_400,
            )
        };
        let attributes = index_attributes(&event, "chain-a");
        let subject = attributes
            .iter()
            .find(|(k, _)| *k == "subject_key")
            .unwrap()
            .1
            .as_s()
            .unwrap();
        assert!(subject.starts_with("sha256:") && subject.len() < 100);
        assert!(!attributes.iter().any(|(k, _)| *k == "grant_key"));
        let shard = chain_byte("chain-a") % QUERY_SHARDS;
        let target = attributes
            .iter()
            .find(|(k, _)| *k == "target_key")
            .unwrap()
            .1
            .as_s()
            .unwrap();
        assert_eq!(target, &format!("t#{shard}"));
    }
}
