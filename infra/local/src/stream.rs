//! The Lambda event source mapping of revoke-fanout, emulated against moto: reads the revocations
//! table's stream and invokes the handler with real stream records in Lambda's JSON shape.
//!
//! Semantics follow the template's mapping: batches of up to `batch_size` records in order;
//! `batchItemFailures` makes the next invocation start at the first failed record (records before
//! it are checkpointed); a handler error retries the whole batch; a record that fails more than
//! `max_retries` times goes to the dead-letter list (the DLQ) and the shard moves past it.
//!
//! moto's DynamoDB Streams API is called as plain JSON (the emulator does not check signatures);
//! this module is local tooling only and never ships in a function.

use serde_json::{Value, json};
use std::collections::HashMap;

/// One call of an AWS JSON-protocol API on the emulator. moto routes by the signing service named
/// in the credential scope and does not verify signatures; local tooling only.
pub async fn moto_call(
    http: &reqwest::Client,
    endpoint: &str,
    region: &str,
    signing_service: &str,
    target: &str,
    body: Value,
) -> Result<Value, String> {
    let response = http
        .post(endpoint)
        .header("Content-Type", "application/x-amz-json-1.0")
        .header("X-Amz-Target", target)
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/{signing_service}/aws4_request, SignedHeaders=host, Signature=0"
            ),
        )
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("{target}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{target}: HTTP {status}: {text}"));
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("{target}: {e}"))
}

/// EventBridge's delivery of a rule's events to a function, emulated: the provisioner points the
/// template's rule at an SQS queue in moto, and this reads the queue.
pub struct RuleQueue {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    queue_url: String,
}

impl RuleQueue {
    pub fn new(endpoint: &str, region: &str, queue_url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            queue_url: queue_url.to_string(),
        }
    }

    /// Events waiting for the function, each removed from the queue once `handler` returns.
    pub async fn deliver<F, Fut>(&self, mut handler: F) -> Result<usize, String>
    where
        F: FnMut(Value) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let received = moto_call(
            &self.http,
            &self.endpoint,
            &self.region,
            "sqs",
            "AmazonSQS.ReceiveMessage",
            json!({ "QueueUrl": self.queue_url, "MaxNumberOfMessages": 10 }),
        )
        .await?;
        let messages = received["Messages"].as_array().cloned().unwrap_or_default();
        for message in &messages {
            let event: Value = message["Body"]
                .as_str()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or(Value::Null);
            handler(event).await;
            moto_call(
                &self.http,
                &self.endpoint,
                &self.region,
                "sqs",
                "AmazonSQS.DeleteMessage",
                json!({ "QueueUrl": self.queue_url, "ReceiptHandle": message["ReceiptHandle"] }),
            )
            .await?;
        }
        Ok(messages.len())
    }
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    pub invocations: u32,
    /// Records checkpointed (processed successfully or dead-lettered).
    pub records_done: u32,
    pub failures_reported: u32,
    /// Sequence numbers sent to the dead-letter list by this poll.
    pub dead_lettered: Vec<String>,
}

struct ShardCursor {
    /// Iterator at the first record not yet checkpointed (moto iterators do not expire).
    iterator: String,
    /// Records with a sequence number below this are done (skipped when a batch is re-read).
    done_below: Option<u128>,
    retries: HashMap<String, u32>,
}

pub struct StreamPoller {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    stream_arn: String,
    pub batch_size: usize,
    pub max_retries: u32,
    shards: HashMap<String, ShardCursor>,
    start: StartingPosition,
}

/// Where a new poller starts reading, as the mapping's `StartingPosition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
}

impl StreamPoller {
    /// The stream of `table` on the emulator at `endpoint`.
    pub async fn new(endpoint: &str, region: &str, table: &str, start: StartingPosition) -> Result<Self, String> {
        let mut poller = Self {
            http: reqwest::Client::new(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            stream_arn: String::new(),
            batch_size: 100,
            max_retries: 5,
            shards: HashMap::new(),
            start,
        };
        let streams = poller.call("ListStreams", json!({ "TableName": table })).await?;
        poller.stream_arn = streams["Streams"][0]["StreamArn"]
            .as_str()
            .ok_or_else(|| format!("table {table} has no stream"))?
            .to_string();
        // Iterators are taken now, so `Latest` means "records written after this call".
        poller.open_shards().await?;
        Ok(poller)
    }

    /// Poller for the revocations table named by the environment (`make local`, tests).
    pub async fn from_env(start: StartingPosition) -> Result<Self, String> {
        Self::for_table_in_env("NHI_REVOCATIONS_TABLE", start).await
    }

    /// Poller for the table the environment variable `table_var` names (e.g. `NHI_AUDIT_TABLE`).
    pub async fn for_table_in_env(table_var: &str, start: StartingPosition) -> Result<Self, String> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").map_err(|_| "AWS_ENDPOINT_URL is not set")?;
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
        let table = std::env::var(table_var).map_err(|_| format!("{table_var} is not set"))?;
        Self::new(&endpoint, &region, &table, start).await
    }

    async fn call(&self, operation: &str, body: Value) -> Result<Value, String> {
        moto_call(
            &self.http,
            &self.endpoint,
            &self.region,
            "dynamodb",
            &format!("DynamoDBStreams_20120810.{operation}"),
            body,
        )
        .await
    }

    /// Read every shard up to its newest record, invoking `handler` per batch as Lambda would.
    /// `handler` returns the function's response (`Ok`) or a function error (`Err`).
    pub async fn poll_once<F, Fut>(&mut self, mut handler: F) -> Result<PollOutcome, String>
    where
        F: FnMut(Value) -> Fut,
        Fut: std::future::Future<Output = Result<Value, String>>,
    {
        let mut outcome = PollOutcome::default();
        for shard_id in self.open_shards().await? {
            self.poll_shard(&shard_id, &mut handler, &mut outcome).await?;
        }
        Ok(outcome)
    }

    /// Every shard of the stream, with an iterator at the starting position for new ones.
    async fn open_shards(&mut self) -> Result<Vec<String>, String> {
        let description = self
            .call("DescribeStream", json!({ "StreamArn": self.stream_arn }))
            .await?;
        let shard_ids: Vec<String> = description["StreamDescription"]["Shards"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["ShardId"].as_str().map(String::from))
            .collect();
        for shard_id in &shard_ids {
            if self.shards.contains_key(shard_id) {
                continue;
            }
            let iterator = self
                .call(
                    "GetShardIterator",
                    json!({
                        "StreamArn": self.stream_arn,
                        "ShardId": shard_id,
                        "ShardIteratorType": match self.start {
                            StartingPosition::TrimHorizon => "TRIM_HORIZON",
                            StartingPosition::Latest => "LATEST",
                        },
                    }),
                )
                .await?["ShardIterator"]
                .as_str()
                .ok_or("GetShardIterator returned no iterator")?
                .to_string();
            self.shards.insert(
                shard_id.clone(),
                ShardCursor {
                    iterator,
                    done_below: None,
                    retries: HashMap::new(),
                },
            );
        }
        Ok(shard_ids)
    }

    async fn poll_shard<F, Fut>(
        &mut self,
        shard_id: &str,
        handler: &mut F,
        outcome: &mut PollOutcome,
    ) -> Result<(), String>
    where
        F: FnMut(Value) -> Fut,
        Fut: std::future::Future<Output = Result<Value, String>>,
    {
        loop {
            let iterator = self.shards[shard_id].iterator.clone();
            let page = self
                .call(
                    "GetRecords",
                    json!({ "ShardIterator": iterator, "Limit": self.batch_size }),
                )
                .await?;
            let next_iterator = page["NextShardIterator"].as_str().map(String::from);
            let done_below = self.shards[shard_id].done_below;
            let records: Vec<Value> = page["Records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| done_below.is_none_or(|d| sequence(r) >= d))
                .map(|r| self.lambda_record(r))
                .collect();
            if records.is_empty() {
                // Nothing new; a fully processed page moves the iterator on.
                if let Some(next) = next_iterator
                    && page["Records"].as_array().is_some_and(|r| !r.is_empty())
                {
                    let cursor = self.shards.get_mut(shard_id).expect("shard");
                    cursor.iterator = next;
                    continue;
                }
                return Ok(());
            }
            outcome.invocations += 1;
            let first_failure = match handler(json!({ "Records": records })).await {
                Ok(response) => response["batchItemFailures"]
                    .as_array()
                    .and_then(|f| f.first())
                    .and_then(|f| f["itemIdentifier"].as_str())
                    .map(String::from),
                // A function error fails the whole batch.
                Err(_) => records[0]["dynamodb"]["SequenceNumber"].as_str().map(String::from),
            };
            let cursor = self.shards.get_mut(shard_id).expect("shard");
            match first_failure {
                None => {
                    outcome.records_done += records.len() as u32;
                    cursor.done_below = None;
                    cursor.iterator = next_iterator.ok_or("GetRecords returned no next iterator")?;
                }
                Some(failed) => {
                    outcome.failures_reported += 1;
                    let failed_seq: u128 = failed.parse().map_err(|_| format!("bad sequence number {failed}"))?;
                    outcome.records_done += records.iter().filter(|r| sequence(r) < failed_seq).count() as u32;
                    let retries = cursor.retries.entry(failed.clone()).or_insert(0);
                    *retries += 1;
                    if *retries > self.max_retries {
                        // Bounded retries exhausted: to the DLQ, and the shard moves on.
                        eprintln!(
                            "revoke-fanout: record {failed} failed {retries} times; sent to the dead-letter queue"
                        );
                        outcome.dead_lettered.push(failed.clone());
                        outcome.records_done += 1;
                        cursor.done_below = Some(failed_seq + 1);
                    } else {
                        // Retried from the failed record at the next poll (this batch is re-read).
                        cursor.done_below = Some(failed_seq);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// moto's record plus what Lambda adds (`eventSourceARN`), with the creation time as epoch seconds.
    fn lambda_record(&self, mut record: Value) -> Value {
        record["eventSourceARN"] = self.stream_arn.clone().into();
        let created = &record["dynamodb"]["ApproximateCreationDateTime"];
        if !created.is_number() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            record["dynamodb"]["ApproximateCreationDateTime"] = now.into();
        }
        record
    }
}

fn sequence(record: &Value) -> u128 {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
