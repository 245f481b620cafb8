//! Structured JSON logs to stdout (CloudWatch on Lambda; level from `RUST_LOG`, default `info`),
//! and metrics as Embedded Metric Format lines on the same stream.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // try_init: a second call (tests, local runner) is harmless.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .with_ansi(false)
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
