//! AWS adapters behind the domain ports. Clients come from `aws_config` defaults, so the standard
//! `AWS_ENDPOINT_URL` (and profile/region) settings point them anywhere without code changes.

pub mod call_counter;
pub mod dynamo;
pub mod dynamo_fanout;
pub mod dynamo_rotation;
pub mod eventbridge;
pub mod iam;
pub mod kms;
pub mod registry_writes;
pub mod sts;

use crate::cache::CachedPolicyStore;
use crate::config::Config;
use crate::error::Result;
use crate::exchange::{ExchangeService, ExchangeSettings};
use crate::http_api::BrokerApi;
use crate::jwks::HttpIssuerKeys;
use crate::ports::SystemClock;
use call_counter::CallCounter;
use std::sync::Arc;

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

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        let calls = CallCounter::default();
        let dynamo = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let kms = aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let eventbridge = aws_sdk_eventbridge::Client::from_conf(
            aws_sdk_eventbridge::config::Builder::from(sdk)
                .interceptor(calls.clone())
                .build(),
        );
        let iam = aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::config::Builder::from(sdk)
                .interceptor(calls.clone())
                .build(),
        );
        Self {
            dynamo,
            kms,
            sts,
            eventbridge,
            iam,
            calls,
        }
    }
}

/// The signing-key ring in the registry.
pub fn key_ring(config: &Config, dynamo: &aws_sdk_dynamodb::Client) -> Arc<dynamo_rotation::DynamoKeyRing> {
    Arc::new(dynamo_rotation::DynamoKeyRing::new(
        dynamo.clone(),
        &config.registry_table,
        &config.audit_table,
        &config.signing_key_ring,
    ))
}

/// The ring-aware signer every function that signs uses.
pub fn signer(config: &Config, ring: Arc<dyn crate::ports::KeyRingStore>, kms: &aws_sdk_kms::Client) -> kms::KmsSigner {
    kms::KmsSigner::with_ring(kms.clone(), &config.signing_key_id, ring, config.signing_keys_cache)
}

/// The rotate function's service: secrets registry, KMS (encrypt only, key lifecycle, signing for
/// hook calls) and the key ring. Built once per execution environment.
pub fn rotation_service(config: &Config, clients: &Clients) -> Result<crate::rotation::RotationService> {
    use crate::rotation::{HttpRotationHook, KeyRotationSettings, RotationService, RotationSettings};
    let clock: Arc<dyn crate::ports::Clock> = Arc::new(SystemClock);
    let ring = key_ring(config, &clients.dynamo);
    let signer = Arc::new(signer(config, ring.clone(), &clients.kms));
    Ok(RotationService {
        store: Arc::new(dynamo_rotation::DynamoRotationStore::new(
            clients.dynamo.clone(),
            &config.registry_table,
            &config.audit_table,
            &config.revocations_table,
        )),
        encryptor: Arc::new(kms::KmsSecretCipher::new(clients.kms.clone(), &config.secrets_key_id)),
        hook: Arc::new(HttpRotationHook::new(signer, clock.clone(), &config.broker_issuer)?),
        key_ring: ring,
        key_admin: Arc::new(kms::KmsKeyAdmin::new(
            clients.kms.clone(),
            config.rotation.signing_key_policy(),
        )),
        clock,
        settings: RotationSettings {
            batch_size: config.rotation.batch_size,
            concurrency: config.rotation.concurrency,
            keys: KeyRotationSettings::derived(
                &config.signing_key_id,
                config.rotation.signing_key_max_age_seconds,
                config.max_token_ttl_seconds,
                config.signing_keys_cache.as_secs() as i64,
                config.clock_leeway_seconds,
                config.rotation.key_deletion_window_days,
            ),
        },
    })
}

/// revoke-fanout: leases and deliveries in DynamoDB, SETs signed with the broker's key ring,
/// EventBridge buses, IAM deny policies for AWS sessions.
pub fn fanout_service(config: &Config, clients: &Clients) -> Result<crate::fanout::FanoutService> {
    use crate::fanout::{FanoutService, FanoutSettings};
    let clock: Arc<dyn crate::ports::Clock> = Arc::new(SystemClock);
    let signer = Arc::new(signer(config, key_ring(config, &clients.dynamo), &clients.kms));
    Ok(FanoutService {
        leases: Arc::new(dynamo_fanout::DynamoFanoutLedger::new(
            clients.dynamo.clone(),
            &config.leases_table,
            &config.audit_table,
            &config.revocations_table,
            config.fanout.concurrency,
        )),
        registry: Arc::new(dynamo_fanout::DynamoFanoutRegistry::new(
            clients.dynamo.clone(),
            &config.registry_table,
        )),
        deliveries: Arc::new(dynamo_fanout::DynamoDeliveryLedger::new(
            clients.dynamo.clone(),
            &config.registry_table,
            &config.audit_table,
        )),
        notifier: Arc::new(crate::secevent::DestinationNotifier {
            webhook: crate::secevent::WebhookPusher::new(signer, clock.clone(), &config.broker_issuer)?,
            bus: Arc::new(eventbridge::EventBridgeBus::new(clients.eventbridge.clone())),
        }),
        sessions: Arc::new(iam::IamSessionDenier::new(
            clients.iam.clone(),
            clients.dynamo.clone(),
            &config.registry_table,
        )),
        clock,
        settings: FanoutSettings {
            page_size: config.fanout.page_size,
            concurrency: config.fanout.concurrency,
            max_attempts: config.fanout.max_attempts,
            backoff_seconds: config.fanout.backoff_seconds,
            confirm_window_seconds: config.fanout.confirm_window_seconds,
            ..FanoutSettings::default()
        },
    })
}

/// expire-sweeper: the expiry indexes, delivery records and audit chains. Never signs or decrypts.
pub fn sweep_service(config: &Config, clients: &Clients) -> crate::sweeper::SweepService {
    use crate::sweeper::{SweepService, SweepSettings};
    SweepService {
        store: Arc::new(dynamo_fanout::DynamoExpiryStore::new(
            clients.dynamo.clone(),
            &config.leases_table,
            &config.registry_table,
            &config.audit_table,
            &config.revocations_table,
            config.sweep.concurrency,
        )),
        deliveries: Arc::new(dynamo_fanout::DynamoDeliveryLedger::new(
            clients.dynamo.clone(),
            &config.registry_table,
            &config.audit_table,
        )),
        clock: Arc::new(SystemClock),
        settings: SweepSettings {
            page_size: config.sweep.page_size,
            max_per_run: config.sweep.max_per_run,
            concurrency: config.sweep.concurrency,
            ..SweepSettings::default()
        },
    }
}

/// The exchange API wired to DynamoDB, KMS and HTTPS JWKS. Built once per execution environment.
pub fn broker_api(config: &Config, sdk: &aws_config::SdkConfig) -> Result<BrokerApi> {
    broker_api_with(config, Clients::new(sdk))
}

pub fn broker_api_with(config: &Config, clients: Clients) -> Result<BrokerApi> {
    let Clients {
        dynamo,
        kms,
        sts,
        calls,
        ..
    } = clients;
    Ok(BrokerApi::with_call_counter(
        ExchangeService {
            policy: Arc::new(CachedPolicyStore::new(
                Arc::new(dynamo::DynamoRegistry::new(dynamo.clone(), &config.registry_table)),
                config.policy_cache,
            )),
            ledger: Arc::new(
                dynamo::DynamoLedger::new(
                    dynamo.clone(),
                    &config.leases_table,
                    &config.audit_table,
                    &config.revocations_table,
                )
                .with_registry_guard(&config.registry_table),
            ),
            // Secrets are read fresh on every release: a rotation takes effect at once.
            secrets: Arc::new(dynamo::DynamoRegistry::new(dynamo.clone(), &config.registry_table)),
            decryptor: Arc::new(kms::KmsSecretCipher::new(kms.clone(), &config.secrets_key_id)),
            signer: Arc::new(signer(config, key_ring(config, &dynamo), &kms)),
            roles: Arc::new(sts::StsRoleAssumer::new(sts)),
            issuer_keys: Arc::new(HttpIssuerKeys::new(config.jwks.clone())?),
            clock: Arc::new(SystemClock),
            settings: ExchangeSettings {
                broker_issuer: config.broker_issuer.clone(),
                max_token_ttl_seconds: config.max_token_ttl_seconds,
                clock_leeway_seconds: config.clock_leeway_seconds,
            },
        },
        calls,
    )
    .with_deadline(config.request_deadline))
}
