//! `nhi-local serve`: the exchange API and a demo issuer on 127.0.0.1, against whatever AWS
//! endpoint `AWS_ENDPOINT_URL` names (moto, under `make local`).

use clap::Parser;
use nhi_broker::aws::dynamo::DynamoRegistry;
use nhi_broker::aws::kms::KmsSecretCipher;
use nhi_broker::config::Config;
use nhi_broker::ports::{Clock, SystemClock};
use nhi_broker::testing::demo_issuer::DemoIssuer;
use std::sync::Arc;

#[derive(Parser)]
#[command(about = "Run the nhi-broker exchange API and a demo OIDC issuer on loopback")]
struct Args {
    /// Port of the exchange API on 127.0.0.1.
    #[arg(long, env = "NHI_LOCAL_PORT", default_value_t = 8787)]
    port: u16,
    /// Port of the demo issuer (JWKS and token minting) on 127.0.0.1.
    #[arg(long, env = "NHI_LOCAL_ISSUER_PORT", default_value_t = 8788)]
    issuer_port: u16,
    /// Run scheduled functions every this many seconds instead of their template schedules (demos).
    #[arg(long, env = "NHI_LOCAL_SCHEDULE_EVERY")]
    schedule_every: Option<u64>,
    /// The rotate function's schedule expression (exported from template.yaml by the provisioner).
    #[arg(long, env = "NHI_LOCAL_SCHEDULE_ROTATEFUNCTION", default_value = "rate(1 hour)")]
    rotate_schedule: String,
    /// expire-sweeper's schedule expression (from template.yaml).
    #[arg(
        long,
        env = "NHI_LOCAL_SCHEDULE_EXPIRESWEEPERFUNCTION",
        default_value = "rate(5 minutes)"
    )]
    sweep_schedule: String,
    /// revoke-fanout's delivery-retry schedule expression (from template.yaml).
    #[arg(
        long,
        env = "NHI_LOCAL_SCHEDULE_REVOKEFANOUTFUNCTION",
        default_value = "rate(1 minute)"
    )]
    retry_schedule: String,
    /// How often the emulated event source mapping polls the revocations stream, in milliseconds.
    #[arg(long, env = "NHI_LOCAL_STREAM_POLL_MS", default_value_t = 1000)]
    stream_poll_ms: u64,
}

#[tokio::main]
async fn main() {
    nhi_broker::telemetry::init();
    if let Err(message) = run(Args::parse()).await {
        eprintln!("nhi-local: {message}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let sdk = nhi_broker::aws::sdk_config().await;
    let api = Arc::new(nhi_broker::wiring::broker_api(&config, &sdk).map_err(|e| e.to_string())?);

    let issuer_listener = nhi_local::bind_loopback(args.issuer_port)
        .await
        .map_err(|e| format!("cannot bind 127.0.0.1:{}: {e}", args.issuer_port))?;
    let api_listener = nhi_local::bind_loopback(args.port)
        .await
        .map_err(|e| format!("cannot bind 127.0.0.1:{}: {e}", args.port))?;
    let issuer_url = format!("http://127.0.0.1:{}", args.issuer_port);
    let issuer = Arc::new(DemoIssuer::generate(&issuer_url).map_err(|e| e.to_string())?);
    let registry = DynamoRegistry::new(aws_sdk_dynamodb::Client::new(&sdk), &config.registry_table);
    let encryptor = KmsSecretCipher::new(aws_sdk_kms::Client::new(&sdk), &config.secrets_key_id);
    let ledger = nhi_broker::aws::dynamo::DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &config.leases_table,
        &config.audit_table,
        &config.revocations_table,
    );
    let created = nhi_local::bootstrap_demo(
        &registry,
        &ledger,
        &config.registry_table,
        &encryptor,
        &issuer,
        &format!("{issuer_url}/jwks.json"),
        SystemClock.now(),
    )
    .await
    .map_err(|e| format!("bootstrap of demo issuer and grant failed: {e}"))?;
    if !created.is_empty() {
        println!("demo registry created: {}", created.join(", "));
    }

    let period = |expression: &str, what: &str| -> Result<u64, String> {
        match args.schedule_every {
            Some(seconds) => Ok(seconds.max(1)),
            None => nhi_local::schedule_period(expression)
                .ok_or_else(|| format!("cannot emulate the {what} schedule {expression:?}")),
        }
    };
    let rotate_every = period(&args.rotate_schedule, "rotate")?;
    let sweep_every = period(&args.sweep_schedule, "expire-sweeper")?;
    let retry_every = period(&args.retry_schedule, "revoke-fanout retry")?;
    let clients = nhi_broker::aws::Clients::new(&sdk);
    let rotation = Arc::new(nhi_broker::wiring::rotation_service(&config, &clients).map_err(|e| e.to_string())?);
    let fanout = Arc::new(nhi_broker::wiring::fanout_service(&config, &clients).map_err(|e| e.to_string())?);
    let sweeper = Arc::new(nhi_broker::wiring::sweep_service(&config, &clients));
    let poller = nhi_local::stream::StreamPoller::from_env(nhi_local::stream::StartingPosition::TrimHorizon).await?;
    let exporter = Arc::new(
        nhi_broker::wiring::export_service_from_env()
            .await
            .map_err(|e| e.to_string())?,
    );
    let mut audit_poller = nhi_local::stream::StreamPoller::for_table_in_env(
        "NHI_AUDIT_TABLE",
        nhi_local::stream::StartingPosition::TrimHorizon,
    )
    .await?;
    audit_poller.batch_size = 1000;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let issuer_task = tokio::spawn(nhi_local::serve_demo_issuer(issuer, issuer_listener, stopped.clone()));
    let rotate_task = {
        let rotation = rotation.clone();
        tokio::spawn(run_schedule("rotate", rotate_every, stopped.clone(), move |event| {
            let rotation = rotation.clone();
            async move { nhi_broker::jobs::handle_rotate_event(&rotation, event).await }
        }))
    };
    let sweep_task = {
        let sweeper = sweeper.clone();
        tokio::spawn(run_schedule(
            "expire-sweeper",
            sweep_every,
            stopped.clone(),
            move |event| {
                let sweeper = sweeper.clone();
                async move { nhi_broker::jobs::handle_sweep_event(&sweeper, event).await }
            },
        ))
    };
    let retry_task = {
        let fanout = fanout.clone();
        tokio::spawn(run_schedule(
            "revoke-fanout (retries)",
            retry_every,
            stopped.clone(),
            move |event| {
                let fanout = fanout.clone();
                async move { nhi_broker::jobs::handle_fanout_event(&fanout, event, None).await }
            },
        ))
    };
    let every = std::time::Duration::from_millis(args.stream_poll_ms.max(100));
    let stream_task = tokio::spawn(poll_stream(
        "revoke-fanout",
        poller,
        every,
        stopped.clone(),
        move |event| {
            let fanout = fanout.clone();
            async move {
                // Lambda's timeout for the function (template: 300 s).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
                nhi_broker::jobs::handle_fanout_event(&fanout, event, Some(deadline))
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    ));
    // audit-export, driven by the audit table's stream.
    let export_task = tokio::spawn(poll_stream(
        "audit-export",
        audit_poller,
        every,
        stopped.clone(),
        move |event| {
            let exporter = exporter.clone();
            async move {
                nhi_broker::jobs::handle_export_event(&exporter, event)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    ));
    // The template's on-demand rotation rule (brokerctl rotate), as EventBridge delivers it.
    let on_demand_task = {
        let rotation = rotation.clone();
        let mut stop = stopped.clone();
        let queue = std::env::var("NHI_LOCAL_RULE_QUEUE_ROTATEFUNCTION").ok().map(|url| {
            nhi_local::stream::RuleQueue::new(
                &std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
                &std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
                &url,
            )
        });
        tokio::spawn(async move {
            let Some(queue) = queue else { return };
            loop {
                let delivered = queue
                    .deliver(|event| {
                        let rotation = rotation.clone();
                        async move {
                            match nhi_broker::jobs::handle_rotate_event(&rotation, event).await {
                                Ok(outcome) => println!("rotate (on demand): {outcome}"),
                                Err(e) => eprintln!("rotate (on demand): {e}"),
                            }
                        }
                    })
                    .await;
                if let Err(e) = delivered {
                    eprintln!("rotate (on demand): rule queue poll failed: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let api_task = tokio::spawn(nhi_local::serve_broker(api, api_listener, stopped));

    let base = format!("http://127.0.0.1:{}", args.port);
    println!(
        "
nhi-broker exchange API: {base}  (metadata: {base}/.well-known/oauth-authorization-server)
demo issuer: {issuer_url}  (JWKS: {issuer_url}/jwks.json, workload tokens: {issuer_url}/token)
rotate every {rotate_every} s, expire-sweeper every {sweep_every} s, delivery retries every {retry_every} s
  (the template's schedules unless --schedule-every / NHI_LOCAL_SCHEDULE_EVERY)
revoke-fanout: driven by the revocations table's stream (polled like Lambda's event source mapping)
audit-export: driven by the audit table's stream, into the export bucket

Try it (README.md has every endpoint):
  TOKEN=$(curl -s {issuer_url}/token)
  curl -s {base}/token \\
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \\
    --data-urlencode subject_token=\"$TOKEN\" \\
    --data-urlencode audience={target} \\
    -d scope=deploy

Ctrl-C stops everything.
",
        target = nhi_local::DEMO_TARGET
    );
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop.send(true);
    let _ = tokio::join!(
        issuer_task,
        api_task,
        rotate_task,
        sweep_task,
        retry_task,
        stream_task,
        export_task,
        on_demand_task
    );
    println!("nhi-local stopped");
    Ok(())
}

/// A stream-driven function, as its event source mapping would invoke it: poll, invoke per batch,
/// wait `every`, until stopped.
async fn poll_stream<F, Fut>(
    name: &'static str,
    mut poller: nhi_local::stream::StreamPoller,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, String>>,
{
    loop {
        match poller.poll_once(&handler).await {
            Ok(outcome) if outcome.invocations > 0 => println!(
                "{name}: {} invocation(s), {} record(s) done, {} failure(s) reported, dead-lettered {:?}",
                outcome.invocations, outcome.records_done, outcome.failures_reported, outcome.dead_lettered
            ),
            Ok(_) => {}
            Err(e) => eprintln!("{name}: stream poll failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A scheduled function, as EventBridge would invoke it: a run now, then one every `every`
/// seconds, until stopped.
async fn run_schedule<F, Fut>(name: &'static str, every: u64, mut stop: tokio::sync::watch::Receiver<bool>, run: F)
where
    F: Fn(serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, nhi_broker::BrokerError>>,
{
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(every));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let event = serde_json::json!({
            "version": "0", "id": uuid::Uuid::new_v4().to_string(), "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "region": "us-east-1",
            "resources": [], "detail": {}
        });
        match run(event).await {
            Ok(report) => println!("{name}: {report}"),
            Err(e) => eprintln!("{name}: run failed: {e}"),
        }
    }
}
