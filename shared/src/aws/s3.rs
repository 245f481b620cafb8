//! The audit export bucket (S3, Object Lock): objects written once per key, never deleted here.

use crate::error::{BrokerError, Result};
use crate::export::ExportStore;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;

/// An S3 client for `sdk`: path-style addressing when an endpoint is set (a local emulator on
/// 127.0.0.1 has no per-bucket host names).
pub fn client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

pub struct S3ExportStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3ExportStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }
}

#[async_trait]
impl ExportStore for S3ExportStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        // A checksum is required on a bucket with default Object Lock retention.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/x-ndjson")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| BrokerError::aws("s3", "PutObject", &e))?;
        Ok(())
    }
}

/// One line of the export, and the object it is in.
#[derive(Debug, Clone)]
pub struct ExportedLine {
    pub key: String,
    pub line: serde_json::Value,
}

/// Every line of every export object (`audit/v1/`), for `brokerctl audit verify --export`. A line
/// that is not JSON is returned as a string value, for the caller to report.
pub async fn read_export(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<ExportedLine>> {
    let mut lines = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(crate::export::PREFIX)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| BrokerError::aws("s3", "ListObjectsV2", &e))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            let body = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| BrokerError::aws("s3", "GetObject", &e))?
                .body
                .collect()
                .await
                .map_err(|_| BrokerError::CorruptRecord(format!("export object {key}: unreadable body")))?
                .into_bytes();
            for text in String::from_utf8_lossy(&body).lines().filter(|l| !l.trim().is_empty()) {
                lines.push(ExportedLine {
                    key: key.to_string(),
                    line: serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.into())),
                });
            }
        }
    }
    Ok(lines)
}
