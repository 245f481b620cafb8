//! AWS adapters behind the domain ports. Clients come from `aws_config` defaults, so the standard
//! `AWS_ENDPOINT_URL` (and profile/region) settings point them anywhere without code changes.

pub mod call_counter;
pub mod dynamo;
pub mod envelope;
pub mod eventbridge;
pub mod iam;
pub mod kms;
pub mod s3;
pub mod sts;

use call_counter::CallCounter;

/// The SDK configuration every client is built from, with deadlines from the environment
/// (`NHI_AWS_*`, defaults otherwise): no AWS call may hang longer than its operation timeout.
pub async fn sdk_config() -> aws_config::SdkConfig {
    sdk_config_with(&crate::config::AwsCallSettings::from_env().unwrap_or_default(), None).await
}

/// As `sdk_config`, with explicit deadlines and optionally another endpoint (tests put a fault
/// layer in front of the local emulator this way).
pub async fn sdk_config_with(
    settings: &crate::config::AwsCallSettings,
    endpoint_url: Option<&str>,
) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .operation_attempt_timeout(settings.attempt_timeout)
        .operation_timeout(settings.operation_timeout)
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(crate::https::sdk_http_client())
        .timeout_config(timeouts)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(settings.max_attempts));
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// Clients for every service the broker calls, all counting their requests into one counter.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamo: aws_sdk_dynamodb::Client,
    pub kms: aws_sdk_kms::Client,
    pub sts: aws_sdk_sts::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub iam: aws_sdk_iam::Client,
    pub calls: CallCounter,
}

/// One SDK client counting its requests into `calls` (every client is built this way).
#[macro_export]
macro_rules! counted_client {
    ($sdk_crate:ident, $sdk:expr, $calls:expr) => {
        $sdk_crate::Client::from_conf(
            $sdk_crate::config::Builder::from($sdk)
                .interceptor($calls.clone())
                .build(),
        )
    };
}

impl Clients {
    /// Every client (tests, the local runner); each function builds only its own set (`wiring`).
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        let calls = CallCounter::default();
        Self {
            dynamo: counted_client!(aws_sdk_dynamodb, sdk, calls),
            kms: counted_client!(aws_sdk_kms, sdk, calls),
            sts: counted_client!(aws_sdk_sts, sdk, calls),
            eventbridge: counted_client!(aws_sdk_eventbridge, sdk, calls),
            iam: counted_client!(aws_sdk_iam, sdk, calls),
            calls,
        }
    }
}
