//! Structured JSON logs to stdout (CloudWatch on Lambda; level from `RUST_LOG`, default `info`),
//! and metrics as Embedded Metric Format lines on the same stream.

mod json_lines;

pub use json_lines::JsonLines;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `RUST_LOG` as a level (`debug`) or targets with levels (`nhi_broker=debug,warn`); what it does
/// not set (or cannot be parsed) stays at `info`, so a typo never silences the audit trail's
/// logs. Targets rather than an env filter: no regex engine in the binary.
pub fn log_filter(rust_log: Option<&str>) -> Targets {
    let targets = rust_log
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_default();
    match targets.default_level() {
        Some(_) => targets,
        None => targets.with_default(tracing::Level::INFO),
    }
}

/// The SDK's debug and trace events carry whole HTTP requests and responses: a KMS Decrypt
/// response holds a secret's value (base64). Whatever RUST_LOG says, they stay off.
pub fn is_wire_level(target: &str, level: &tracing::Level) -> bool {
    *level > tracing::Level::INFO && WIRE_LEVEL_TARGETS.iter().any(|prefix| target.starts_with(prefix))
}

/// Crates whose debug/trace events log wire data (prefixes of tracing targets).
const WIRE_LEVEL_TARGETS: &[&str] = &[
    "aws_smithy",
    "aws_sdk",
    "aws_runtime",
    "aws_config",
    "hyper",
    "h2",
    "rustls",
];

pub fn init() {
    init_with_writer(std::io::stdout);
}

/// As `init`, writing somewhere else (the bench formats every line as deployed, into a sink).
pub fn init_with_writer<W: std::io::Write + 'static>(make_writer: fn() -> W) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let json = JsonLines::new(make_writer);
    // try_init: a second call (tests, local runner) is harmless.
    let wire = tracing_subscriber::filter::filter_fn(|meta| !is_wire_level(meta.target(), meta.level()));
    let _ = tracing_subscriber::registry()
        .with(json)
        .with(filter)
        .with(wire)
        .try_init();
}

/// A CloudWatch Embedded Metric Format document: one JSON line that CloudWatch Logs turns into
/// metrics without a PutMetricData call (or its IAM permission).
pub fn emf_document(function: &str, metrics: &[(&str, u64)], timestamp_ms: i64) -> String {
    let mut root = serde_json::Map::new();
    root.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "NhiBroker",
                "Dimensions": [["Function"]],
                "Metrics": metrics.iter().map(|(name, _)| serde_json::json!({"Name": name, "Unit": "Count"})).collect::<Vec<_>>(),
            }],
        }),
    );
    root.insert("Function".into(), function.into());
    for (name, value) in metrics {
        root.insert((*name).into(), (*value).into());
    }
    serde_json::Value::Object(root).to_string()
}

static AUDIT_WRITE_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A refusal whose audit event could not be written: counted and published as the
/// `AuditWriteFailures` metric (alarm on it), not only logged. (Releases never get this far: their
/// record is in their own transaction.)
pub fn audit_write_failed(function: &str) {
    AUDIT_WRITE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    emit_metrics(function, &[("AuditWriteFailures", 1)]);
}

/// Refusals of this process whose audit event could not be written.
pub fn audit_write_failures() -> u64 {
    AUDIT_WRITE_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Write an EMF document to stdout (the Lambda log stream), outside the tracing formatter.
pub fn emit_metrics(function: &str, metrics: &[(&str, u64)]) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    println!("{}", emf_document(function, metrics, ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_the_level_and_a_bad_value_falls_back_to_info() {
        use tracing::Level;
        use tracing_subscriber::filter::LevelFilter;
        assert_eq!(log_filter(None).default_level(), Some(LevelFilter::INFO));
        assert_eq!(log_filter(Some("debug")).default_level(), Some(LevelFilter::DEBUG));
        let targeted = log_filter(Some("nhi_broker=debug,warn"));
        assert!(targeted.would_enable("nhi_broker::exchange", &Level::DEBUG));
        assert!(!targeted.would_enable("hyper", &Level::INFO));
        assert_eq!(log_filter(Some("[bad")).default_level(), Some(LevelFilter::INFO));
        assert_eq!(
            log_filter(Some("nhi_broker=debug")).default_level(),
            Some(LevelFilter::INFO)
        );
        // Wire-level SDK events never, whatever RUST_LOG asks.
        assert!(is_wire_level("aws_smithy_runtime::client::orchestrator", &Level::DEBUG));
        assert!(is_wire_level("aws_sdk_kms::operation::decrypt", &Level::TRACE));
        assert!(!is_wire_level("aws_smithy_runtime::client::orchestrator", &Level::INFO));
        assert!(!is_wire_level("nhi_broker::exchange", &Level::TRACE));
    }

    #[test]
    fn emf_names_every_metric_with_its_value() {
        let doc: serde_json::Value = serde_json::from_str(&emf_document(
            "expire-sweeper",
            &[("LeasesExpired", 3), ("Remaining", 0)],
            7,
        ))
        .unwrap();
        assert_eq!(doc["_aws"]["Timestamp"], 7);
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "LeasesExpired"
        );
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0], "Function");
        assert_eq!(doc["Function"], "expire-sweeper");
        assert_eq!(doc["LeasesExpired"], 3);
        assert_eq!(doc["Remaining"], 0);
    }
}
