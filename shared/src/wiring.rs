//! The composition root: builds each function's service from its configuration and its own
//! set of SDK clients (a function links and initialises only the clients it calls: the sweeper
//! needs DynamoDB alone). Mains call these; tests and the local runner pass `aws::Clients` (all of
//! them), which converts into every set.

use crate::aws::{self, Clients, call_counter::CallCounter};
use crate::config::Config;
use crate::counted_client;
use crate::error::Result;
use crate::exchange::jwks::HttpIssuerKeys;
use crate::exchange::policy::catalog::PolicyCatalog;
use crate::exchange::{ExchangeService, ExchangeSettings};
use crate::http::BrokerApi;
use crate::ports::SystemClock;
use std::sync::Arc;

macro_rules! client_set {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $sdk_crate:ident),+ }) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            $(pub $field: $sdk_crate::Client,)+
            pub calls: CallCounter,
        }

        impl $name {
            pub fn new(sdk: &aws_config::SdkConfig) -> Self {
                let calls = CallCounter::default();
                Self { $($field: counted_client!($sdk_crate, sdk, calls),)+ calls }
            }
        }

        impl From<&Clients> for $name {
            fn from(all: &Clients) -> Self {
                Self { $($field: all.$field.clone(),)+ calls: all.calls.clone() }
            }
        }

        impl From<Clients> for $name {
            fn from(all: Clients) -> Self {
                Self::from(&all)
            }
        }
    };
}

client_set!(
    /// exchange: the registry and ledger, KMS (decrypt, sign), STS.
    ExchangeClients { dynamo: aws_sdk_dynamodb, kms: aws_sdk_kms, sts: aws_sdk_sts }
);
client_set!(
    /// rotate: the registry, KMS (encrypt, key lifecycle, signing hook calls).
    RotationClients { dynamo: aws_sdk_dynamodb, kms: aws_sdk_kms }
);
client_set!(
    /// revoke-fanout: leases and deliveries, KMS (signing SETs), EventBridge buses, IAM deny policies.
    FanoutClients { dynamo: aws_sdk_dynamodb, kms: aws_sdk_kms, eventbridge: aws_sdk_eventbridge, iam: aws_sdk_iam }
);
client_set!(
    /// expire-sweeper: DynamoDB; KMS only to certify its audit chains.
    SweepClients { dynamo: aws_sdk_dynamodb, kms: aws_sdk_kms }
);

/// Every audit writer of this process certifies its chains with the audit key (crate::audit).
pub fn install_audit_certifier(config: &Config, kms: &aws_sdk_kms::Client) {
    if let Some(key_id) = &config.audit_key_id {
        crate::audit::install_certifier(Arc::new(aws::kms::KmsChainCertifier::new(kms.clone(), key_id)));
    }
}

/// The signing-key ring in the registry.
pub fn key_ring(config: &Config, dynamo: &aws_sdk_dynamodb::Client) -> Arc<aws::dynamo::DynamoKeyRing> {
    Arc::new(aws::dynamo::DynamoKeyRing::new(
        dynamo.clone(),
        &config.registry_table,
        &config.audit_table,
        &config.signing_key_ring,
    ))
}

/// The ring-aware signer every function that signs uses.
pub fn signer(
    config: &Config,
    ring: Arc<dyn crate::ports::KeyRingStore>,
    kms: &aws_sdk_kms::Client,
) -> aws::kms::KmsSigner {
    aws::kms::KmsSigner::with_ring(kms.clone(), &config.signing_key_id, ring, config.signing_keys_cache)
}

/// Exchange's signer: in signing mode `envelope` it signs in-process with the active envelope key
/// (it alone may decrypt those keys); fanout and rotate always sign with KMS keys.
pub fn exchange_signer(
    config: &Config,
    ring: Arc<dyn crate::ports::KeyRingStore>,
    kms: &aws_sdk_kms::Client,
) -> aws::kms::KmsSigner {
    let signer = signer(config, ring, kms);
    match config.signing_mode {
        crate::domain::SigningMode::Kms => signer,
        crate::domain::SigningMode::Envelope => {
            signer.with_envelope_keys(aws::envelope::EnvelopeKeys::new(kms.clone(), &config.secrets_key_id))
        }
    }
}

/// The rotate function's service: secrets registry, KMS (encrypt only, key lifecycle, signing for
/// hook calls) and the key ring. Built once per execution environment.
pub fn rotation_service(
    config: &Config,
    clients: impl Into<RotationClients>,
) -> Result<crate::rotation::RotationService> {
    use crate::rotation::{HttpRotationHook, KeyRotationSettings, RotationService, RotationSettings};
    let clients = clients.into();
    install_audit_certifier(config, &clients.kms);
    let clock: Arc<dyn crate::ports::Clock> = Arc::new(SystemClock);
    let ring = key_ring(config, &clients.dynamo);
    let signer = Arc::new(signer(config, ring.clone(), &clients.kms));
    Ok(RotationService {
        store: Arc::new(aws::dynamo::DynamoRotationStore::new(
            clients.dynamo.clone(),
            &config.registry_table,
            &config.audit_table,
            &config.revocations_table,
        )),
        encryptor: Arc::new(aws::kms::KmsSecretCipher::new(
            clients.kms.clone(),
            &config.secrets_key_id,
        )),
        hook: Arc::new(HttpRotationHook::new(signer, clock.clone(), &config.broker_issuer)?),
        key_ring: ring,
        key_admin: Arc::new(
            aws::kms::KmsKeyAdmin::new(clients.kms.clone(), config.rotation.signing_key_policy())
                .with_wrapping_key(&config.secrets_key_id),
        ),
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
            )
            .with_envelope(config.signing_mode, config.rotation.envelope_key_max_age_seconds),
        },
    })
}

/// revoke-fanout: leases and deliveries in DynamoDB, SETs signed with the broker's key ring,
/// EventBridge buses, IAM deny policies for AWS sessions.
pub fn fanout_service(config: &Config, clients: impl Into<FanoutClients>) -> Result<crate::fanout::FanoutService> {
    use crate::fanout::{FanoutService, FanoutSettings};
    let clients = clients.into();
    install_audit_certifier(config, &clients.kms);
    let clock: Arc<dyn crate::ports::Clock> = Arc::new(SystemClock);
    let signer = Arc::new(signer(config, key_ring(config, &clients.dynamo), &clients.kms));
    Ok(FanoutService {
        leases: Arc::new(aws::dynamo::DynamoFanoutLedger::new(
            clients.dynamo.clone(),
            &config.leases_table,
            &config.audit_table,
            &config.revocations_table,
            config.fanout.concurrency,
        )),
        registry: Arc::new(aws::dynamo::DynamoFanoutRegistry::new(
            clients.dynamo.clone(),
            &config.registry_table,
        )),
        deliveries: Arc::new(aws::dynamo::DynamoDeliveryLedger::new(
            clients.dynamo.clone(),
            &config.registry_table,
            &config.audit_table,
        )),
        notifier: Arc::new(crate::fanout::secevent::DestinationNotifier {
            webhook: crate::fanout::secevent::WebhookPusher::new(signer, clock.clone(), &config.broker_issuer)?,
            bus: Arc::new(aws::eventbridge::EventBridgeBus::new(clients.eventbridge.clone())),
        }),
        sessions: Arc::new(aws::iam::IamSessionDenier::new(
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

/// expire-sweeper: the expiry indexes, delivery records and audit chains. Never signs a token or
/// decrypts; its one KMS use is certifying its audit chains.
pub fn sweep_service(config: &Config, clients: impl Into<SweepClients>) -> crate::sweeper::SweepService {
    use crate::sweeper::{SweepService, SweepSettings};
    let clients = clients.into();
    install_audit_certifier(config, &clients.kms);
    SweepService {
        store: Arc::new(aws::dynamo::DynamoExpiryStore::new(
            clients.dynamo.clone(),
            &config.leases_table,
            &config.registry_table,
            &config.audit_table,
            &config.revocations_table,
            config.sweep.concurrency,
        )),
        deliveries: Arc::new(aws::dynamo::DynamoDeliveryLedger::new(
            clients.dynamo.clone(),
            &config.registry_table,
            &config.audit_table,
        )),
        clock: Arc::new(SystemClock),
        digests: config.audit_key_id.as_ref().map(|_| {
            Arc::new(aws::dynamo::DynamoAuditDigests::new(
                clients.dynamo.clone(),
                &config.audit_table,
            )) as Arc<dyn crate::ports::AuditDigestWriter>
        }),
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
    broker_api_with(config, ExchangeClients::new(sdk))
}

pub fn broker_api_with(config: &Config, clients: impl Into<ExchangeClients>) -> Result<BrokerApi> {
    let ExchangeClients {
        dynamo,
        kms,
        sts,
        calls,
    } = clients.into();
    install_audit_certifier(config, &kms);
    Ok(BrokerApi::with_call_counter(
        ExchangeService {
            policy: Arc::new(PolicyCatalog::new(
                Arc::new(aws::dynamo::DynamoRegistry::new(dynamo.clone(), &config.registry_table)),
                config.policy_cache,
            )),
            ledger: Arc::new(
                aws::dynamo::DynamoLedger::new(
                    dynamo.clone(),
                    &config.leases_table,
                    &config.audit_table,
                    &config.revocations_table,
                )
                .with_registry_guard(&config.registry_table),
            ),
            // Secrets are read fresh on every release: a rotation takes effect at once.
            secrets: Arc::new(aws::dynamo::DynamoRegistry::new(dynamo.clone(), &config.registry_table)),
            decryptor: Arc::new(aws::kms::KmsSecretCipher::new(kms.clone(), &config.secrets_key_id)),
            signer: Arc::new(exchange_signer(config, key_ring(config, &dynamo), &kms)),
            roles: Arc::new(aws::sts::StsRoleAssumer::new(sts)),
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

/// audit-export: the export bucket from `NHI_EXPORT_BUCKET`, deadlines from `NHI_AWS_*`. It needs
/// nothing else of the broker's configuration (and its role grants nothing else).
pub async fn export_service_from_env() -> Result<crate::export::ExportService> {
    let bucket = std::env::var("NHI_EXPORT_BUCKET")
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| crate::BrokerError::Config("NHI_EXPORT_BUCKET is required".into()))?;
    let settings = crate::config::AwsCallSettings::from_env()?;
    Ok(export_service(&aws::sdk_config_with(&settings, None).await, &bucket))
}

/// The export service writing to `bucket`.
pub fn export_service(sdk: &aws_config::SdkConfig, bucket: &str) -> crate::export::ExportService {
    crate::export::ExportService::new(Arc::new(aws::s3::S3ExportStore::new(aws::s3::client(sdk), bucket)))
}

#[cfg(test)]
mod tests {
    /// Each function runs in its own process, so each service builder must install the audit
    /// certifier itself (in a test process one builder's install hides another's omission).
    #[test]
    fn every_service_builder_certifies_its_audit_chains() {
        let source = include_str!("wiring.rs");
        for builder in [
            "pub fn broker_api_with(",
            "pub fn rotation_service(",
            "pub fn fanout_service(",
            "pub fn sweep_service(",
        ] {
            let body = &source[source.find(builder).expect(builder)..];
            let body = &body[..body.find("\n}\n").expect("end of the function")];
            assert!(
                body.contains("install_audit_certifier(config"),
                "{builder} does not certify"
            );
        }
    }
}
