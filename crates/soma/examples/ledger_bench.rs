//! Durable ledger appends per second through the real Analytics service on
//! PostgreSQL: the service runs in-process (mTLS, authorization, the
//! group-committing ledger writer) on a fresh database of `DATABASE_URL`,
//! and `--writers` tool-registry clients each call `RecordBillingEvent` in
//! a loop for `--seconds`. Every counted append was acknowledged, so it was
//! committed. `scripts/bench/analytics.sh` compares the figure with
//! `pgbench`'s single-row INSERT rate measured in the same run.
//!
//! The last line is `result.appends_per_sec=<value>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use soma_ca::{Authority, IssueOptions};
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, ServiceKind};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;

#[derive(Debug, Parser)]
#[command(about = "Durable ledger appends per second through Analytics on PostgreSQL")]
struct Args {
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn store(authority: &Authority, td: &TrustDomain, path: &str) -> anyhow::Result<Arc<SvidStore>> {
    let id = SpiffeId::from_parts(td, path)?;
    let issued = authority.issue(&id, Duration::from_secs(3600), IssueOptions::default())?;
    let mut bundles = BundleSet::new();
    bundles.insert(Bundle::from_der_concat(td.clone(), &authority.bundle_der())?);
    Ok(SvidStore::new(
        id,
        Svid::from_der(&issued.chain_der_concatenated(), &issued.key_pkcs8_der)?,
        bundles,
    )?)
}

#[tokio::main(flavor = "multi_thread")]
#[expect(clippy::print_stdout, reason = "the benchmark's output")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("DATABASE_URL").is_none() {
        bail!("DATABASE_URL must point at PostgreSQL");
    }
    let Some(db) = soma_store::testing::engines("analytics")
        .await
        .into_iter()
        .find(|d| d.label == "postgres")
    else {
        bail!("no PostgreSQL test database");
    };

    let dir = tempfile::tempdir()?;
    let td = TrustDomain::parse("somastack.bench")?;
    let authority = Authority::open_or_create(dir.path(), &td)?;
    let (_, row_keys_json) = soma_sign::HmacKeyring::generate("row-1")?;
    let (_, pkcs8) = soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1")?)?;
    let config = soma_analytics::AnalyticsConfig {
        row_keys: soma_sign::HmacKeyring::from_json(&row_keys_json)?,
        signing_key_pem: soma_testing::pem("PRIVATE KEY", &pkcs8),
        signing_key_id: "analytics-1".to_owned(),
        ledger_origin: "somastack.bench/analytics".to_owned(),
        max_export_span: soma_analytics::DEFAULT_MAX_EXPORT_SPAN,
        drills: soma_analytics::DrillConfig::default(),
        anomaly: soma_analytics::AnomalyConfig::default(),
    };
    let database = db.connect().await;
    database.migrate(&soma_analytics::MIGRATIONS).await?;
    let settings = MeshSettings::load(ServiceKind::Analytics, None, |_| None)?;
    let spec = soma_analytics::spec(database.clone(), &settings.limits, config).await?;
    let server_store = store(&authority, &td, "/svc/analytics")?;
    let server_id = server_store.own_id().clone();
    let app = Application::build(settings, server_store, None, spec).await?;
    let addr = app.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    let client_store = store(&authority, &td, "/svc/tool-registry")?;
    let acked = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let deadline = start + warmup + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        // One connection per writer, as separate services would have.
        let channel = soma_mesh::channel(client_store.clone(), addr, server_id.clone())?;
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(async move {
            let mut client = AnalyticsClient::new(channel);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let request = pb::RecordBillingEventRequest {
                    event_id: format!("w{w}-{i}"),
                    tenant: "acme".to_owned(),
                    tool: "summarize".to_owned(),
                    tool_version: "1.0.0".to_owned(),
                    amount: Some(pb::Money {
                        currency: "EUR".to_owned(),
                        micros: 42,
                    }),
                    fuel_consumed: 100,
                    duration_micros: 10,
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: 1_790_000_000,
                        nanos: 0,
                    }),
                    run_id: format!("run-{w}-{i}"),
                    peak_memory_bytes: 65_536,
                    // `(module (memory 1))`: the sandbox reports the digest of the module that ran.
                    module_sha256: soma_sign::sha256(b"\0asm\x01\0\0\0\x05\x03\x01\x00\x01").to_vec(),
                };
                client.record_billing_event(request).await?;
                if start.elapsed() >= warmup {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await?.context("an append failed")?;
    }
    let measured = deadline.duration_since(start + warmup).as_secs_f64();
    let rate = acked.load(Ordering::Relaxed) as f64 / measured;
    println!(
        "writers {}  seconds {}  acknowledged appends {}",
        args.writers,
        args.seconds,
        acked.load(Ordering::Relaxed)
    );
    println!("result.appends_per_sec={rate:.1}");

    let _ = stop_tx.send(());
    server.await??;
    database.close().await;
    db.cleanup().await;
    Ok(())
}
