//! Export throughput and memory of the real Analytics service: the service
//! runs in-process (mTLS, authorization, the ledger writer) on a fresh
//! database (`--engine postgres`, the default, needs `DATABASE_URL`;
//! `--engine sqlite` needs nothing), `--writers` tool-registry clients
//! record `--rows` billing events of one tenant through `RecordBillingEvent`
//! (every row MACed and ledger-included by the service itself), the tables
//! are analyzed (as autovacuum would; the test server runs without it),
//! then one operator exports them all with `ExportBillingLedger`.
//!
//! Measured: the export's rows/s (first request to signature received) and
//! the growth of this process's resident memory during it (`VmRSS` sampled
//! every 50 ms, peak minus the value before the export; client and server
//! share the process, so the figure covers both). The client keeps no
//! document in memory: it writes the received bytes to a temporary file,
//! and after the measurement the file is checked against the signature's
//! SHA-256 and verified with strict Ed25519. The rows/s figure divides the
//! rows of that verified document, counted by parsing it as JSON (each of
//! `rows` must be a seeded event, in order, each once), by the export's
//! time: exactly the rows exported, and no counting inside the timed
//! window. Baseline, same run, same rows: a plain
//! `SELECT * FROM billing_events WHERE tenant = $1 ORDER BY occurred_at,
//! ledger_index` streamed with sqlx `fetch`. `--rounds` rounds alternate the
//! baseline and the export over the same seeded rows (other work on the
//! machine comes and goes, and each figure should see the same share of
//! it); the figures are the rounds' medians, printed with their spread, the
//! memory growth the worst round's.
//!
//! The last lines are `result.<name>=<value>`.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use futures::TryStreamExt as _;
use soma_ca::{Authority, IssueOptions};
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, ServiceKind};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;

#[derive(Debug, Parser)]
#[command(about = "Signed export throughput and memory growth of Analytics")]
struct Args {
    /// Billing events seeded and exported.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Concurrent writers while seeding.
    #[arg(long, default_value_t = 64)]
    writers: u64,
    /// Rounds of (baseline, export) over the same seeded rows; the figures
    /// are their medians.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// `postgres` (DATABASE_URL) or `sqlite`.
    #[arg(long, default_value = "postgres")]
    engine: String,
}

/// The seeded tenant.
const TENANT: &str = "acme";

/// Occurred-at of event 0, Unix seconds; event `i` is `i` milliseconds later.
const BASE_SECONDS: i64 = 1_790_000_000;

/// Target export rate, rows/s (issue 19).
const TARGET_ROWS_PER_SEC: f64 = 250_000.0;

/// Target peak memory growth during the export, MB.
const TARGET_GROWTH_MB: f64 = 50.0;

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

/// `VmRSS` of this process, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Samples `VmRSS` every 50 ms until stopped; returns the peak seen.
fn sample_rss(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            if let Ok(rss) = rss_bytes() {
                peak = peak.max(rss);
            }
            if stop.load(Ordering::Relaxed) {
                return peak;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn event(i: u64) -> pb::RecordBillingEventRequest {
    let millis = i64::try_from(i).unwrap_or(i64::MAX);
    pb::RecordBillingEventRequest {
        event_id: format!("evt-{i:09}"),
        tenant: TENANT.to_owned(),
        tool: "summarize".to_owned(),
        tool_version: "1.4.2".to_owned(),
        amount: Some(pb::Money {
            currency: "EUR".to_owned(),
            micros: 1_250 + (millis % 1000),
        }),
        fuel_consumed: 90_000 + (i % 7919),
        duration_micros: 1_000 + (i % 997),
        occurred_at: Some(prost_types::Timestamp {
            seconds: BASE_SECONDS + millis / 1000,
            nanos: i32::try_from((millis % 1000) * 1_000_000).unwrap_or(0),
        }),
        run_id: format!("run-{i:09}"),
        peak_memory_bytes: 65_536,
        // `(module (memory 1))`: the sandbox reports the digest of the module that ran.
        module_sha256: soma_sign::sha256(b"\0asm\x01\0\0\0\x05\x03\x01\x00\x01").to_vec(),
    }
}

/// The `rows` of an export document, counted by parsing it: each must be
/// seeded event `i` (`evt-{i:09}`, whose time orders it `i`-th) at a
/// distinct ledger index, so the count is exactly the rows exported.
fn exported_rows(document: &[u8], kind: &str) -> anyhow::Result<u64> {
    use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

    #[derive(serde::Deserialize)]
    struct Row {
        event_id: String,
        ledger_index: u64,
        tenant: String,
    }

    /// Visits the array of rows, checking each and keeping only the count.
    struct Rows;

    impl<'de> Visitor<'de> for Rows {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the array of exported rows")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
            let mut indices = std::collections::HashSet::new();
            let mut n: u64 = 0;
            while let Some(row) = seq.next_element::<Row>()? {
                let expected = format!("evt-{n:09}");
                if row.event_id != expected || row.tenant != TENANT {
                    return Err(de::Error::custom(format!(
                        "row {n} is {}/{}, expected {TENANT}/{expected}",
                        row.tenant, row.event_id
                    )));
                }
                if !indices.insert(row.ledger_index) {
                    return Err(de::Error::custom(format!(
                        "ledger index {} exported twice",
                        row.ledger_index
                    )));
                }
                n += 1;
            }
            Ok(n)
        }
    }

    /// Visits the document: its `kind`, and its `rows` through [`Rows`].
    struct Document<'k>(&'k str);

    impl<'de> Visitor<'de> for Document<'_> {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an export document")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut rows = None;
            let mut kind = None;
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "rows" => rows = Some(map.next_value_seed(RowsSeed)?),
                    "kind" => kind = Some(map.next_value::<String>()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            if kind.as_deref() != Some(self.0) {
                return Err(de::Error::custom(format!("kind {kind:?}, expected {}", self.0)));
            }
            rows.ok_or_else(|| de::Error::missing_field("rows"))
        }
    }

    struct RowsSeed;

    impl<'de> de::DeserializeSeed<'de> for RowsSeed {
        type Value = u64;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
            d.deserialize_seq(Rows)
        }
    }

    let mut parser = serde_json::Deserializer::from_slice(document);
    let rows = (&mut parser)
        .deserialize_map(Document(kind))
        .context("the export document")?;
    parser.end().context("bytes after the export document")?;
    Ok(rows)
}

#[tokio::main(flavor = "multi_thread")]
#[expect(clippy::print_stdout, reason = "the benchmark's output")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.engine == "postgres" && std::env::var_os("DATABASE_URL").is_none() {
        bail!("--engine postgres needs DATABASE_URL");
    }
    let Some(db) = soma_store::testing::engines("analytics")
        .await
        .into_iter()
        .find(|d| d.label == args.engine)
    else {
        bail!("no {} test database (engines: sqlite, postgres)", args.engine);
    };

    let dir = tempfile::tempdir()?;
    let td = TrustDomain::parse("somastack.bench")?;
    let authority = Authority::open_or_create(dir.path(), &td)?;
    let (_, row_keys_json) = soma_sign::HmacKeyring::generate("row-1")?;
    let (signer, pkcs8) = soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1")?)?;
    let public_key = signer.public_key();
    let config = soma_analytics::AnalyticsConfig {
        row_keys: soma_sign::HmacKeyring::from_json(&row_keys_json)?,
        signing_key_pem: soma_testing::pem("PRIVATE KEY", &pkcs8),
        signing_key_id: "analytics-1".to_owned(),
        ledger_origin: "somastack.bench/analytics".to_owned(),
        max_export_span: Duration::from_secs(3650 * 86_400),
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

    // ---- seeding: every row recorded (MACed, ledger-appended) by the service
    let registry = store(&authority, &td, "/svc/tool-registry")?;
    let next = Arc::new(AtomicU64::new(0));
    let seed_start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let channel = soma_mesh::channel(registry.clone(), addr, server_id.clone())?;
        let next = Arc::clone(&next);
        let rows = args.rows;
        tasks.push(tokio::spawn(async move {
            let mut client = AnalyticsClient::new(channel);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= rows {
                    return Ok::<_, tonic::Status>(());
                }
                client.record_billing_event(event(i)).await?;
            }
        }));
    }
    for task in tasks {
        task.await?.context("an append failed")?;
    }
    let seed_secs = seed_start.elapsed().as_secs_f64();
    println!(
        "seeded {} rows with {} writers in {seed_secs:.1}s ({:.0} appends/s, {})",
        args.rows,
        args.writers,
        args.rows as f64 / seed_secs,
        args.engine
    );

    // ---- planner statistics, as autovacuum's ANALYZE would have them on a
    // server where it runs (without them PostgreSQL guesses a few rows and
    // sorts the whole remaining window for every page)
    let raw = soma_store::Database::connect(&db.settings, "analytics").await?;
    if let Some(pool) = raw.as_postgres() {
        sqlx::query("ANALYZE billing_events").execute(pool).await?;
        sqlx::query("ANALYZE ledger_leaves").execute(pool).await?;
    } else if let Some(pool) = raw.as_sqlite() {
        sqlx::query("ANALYZE").execute(pool).await?;
    }

    // ---- rounds: the baseline, then the export, alternating, so that both
    // see the same machine (other work on it comes and goes)
    let operator = store(&authority, &td, "/operator/bench")?;
    let mut raw_rates = Vec::new();
    let mut export_rates = Vec::new();
    let mut growths = Vec::new();
    for round in 1..=args.rounds {
        let (raw_rows, raw_secs) = raw_select(&raw).await?;
        ensure!(
            raw_rows == args.rows,
            "raw read saw {raw_rows} rows, seeded {}",
            args.rows
        );
        let raw_rate = raw_rows as f64 / raw_secs;
        let client = AnalyticsClient::new(soma_mesh::channel(operator.clone(), addr, server_id.clone())?);
        let measured = export(client, &public_key, args.rows).await?;
        ensure!(
            measured.rows == args.rows,
            "exported {} rows, seeded {}",
            measured.rows,
            args.rows
        );
        let export_rate = measured.rows as f64 / measured.secs;
        let growth_mb = measured.rss_peak.saturating_sub(measured.rss_before) as f64 / 1e6;
        println!(
            "round {round}: export {} rows (parsed from the verified document), {} bytes in {} chunks, \
             {:.2}s = {export_rate:.0} rows/s, signature verified (strict Ed25519), sha256 matches; \
             VmRSS before {:.1} MB, peak {:.1} MB (growth {growth_mb:.1} MB); baseline SELECT * ... \
             ORDER BY occurred_at, ledger_index streamed with sqlx fetch: {raw_rows} rows in {raw_secs:.2}s \
             = {raw_rate:.0} rows/s; ratio {:.3}",
            measured.rows,
            measured.bytes,
            measured.chunks,
            measured.secs,
            measured.rss_before as f64 / 1e6,
            measured.rss_peak as f64 / 1e6,
            export_rate / raw_rate,
        );
        raw_rates.push(raw_rate);
        export_rates.push(export_rate);
        growths.push(growth_mb);
    }
    raw.close().await;
    let ratios: Vec<f64> = export_rates.iter().zip(&raw_rates).map(|(e, r)| e / r).collect();
    let export_rate = median(&export_rates);
    let raw_rate = median(&raw_rates);
    let ratio = median(&ratios);
    // The worst round: a memory target is a bound, not a typical value.
    let growth_mb = growths.iter().copied().fold(0.0, f64::max);

    println!(
        "{} rounds, median (min..max): export {export_rate:.0} rows/s ({}), raw {raw_rate:.0} rows/s ({}), \
         ratio {ratio:.3} ({}); peak RSS growth, worst round: {growth_mb:.1} MB",
        args.rounds,
        spread(&export_rates, 0),
        spread(&raw_rates, 0),
        spread(&ratios, 3),
    );
    println!();
    println!(
        "| {:<44} | {:>14} | {:>14} | {:<10} |",
        "measurement", "measured", "target", "met"
    );
    println!(
        "| {:<44} | {:>14.0} | {:>14} | {:<10} |",
        "export rows/s (signed, verified rows), median",
        export_rate,
        ">= 250000",
        if export_rate >= TARGET_ROWS_PER_SEC {
            "yes"
        } else {
            "no"
        }
    );
    println!(
        "| {:<44} | {:>14.1} | {:>14} | {:<10} |",
        "peak RSS growth during export, MB, worst",
        growth_mb,
        "<= 50",
        if growth_mb <= TARGET_GROWTH_MB {
            "yes"
        } else {
            "no"
        }
    );
    println!(
        "| {:<44} | {:>14.0} | {:>14} | {:<10} |",
        "baseline: raw SELECT rows/s (sqlx), median", raw_rate, "-", "-"
    );
    println!(
        "| {:<44} | {:>14.3} | {:>14} | {:<10} |",
        "ratio export / raw, median of rounds", ratio, "-", "-"
    );
    println!("result.engine={}", args.engine);
    println!("result.rows={}", args.rows);
    println!("result.seed_secs={seed_secs:.1}");
    println!("result.rounds={}", args.rounds);
    println!("result.export_rows_per_sec={export_rate:.0}");
    println!("result.export_rss_growth_mb={growth_mb:.1}");
    println!("result.raw_rows_per_sec={raw_rate:.0}");
    println!("result.export_over_raw={ratio:.3}");
    println!("result.export_rows_per_sec_rounds={}", list(&export_rates, 0));
    println!("result.raw_rows_per_sec_rounds={}", list(&raw_rates, 0));
    println!("result.export_over_raw_rounds={}", list(&ratios, 3));
    println!("result.export_rss_growth_mb_rounds={}", list(&growths, 1));

    let _ = stop_tx.send(());
    server.await??;
    database.close().await;
    db.cleanup().await;
    Ok(())
}

/// The baseline: the seeded rows read with a plain `SELECT` streamed with
/// sqlx; their count and the seconds it took.
async fn raw_select(raw: &soma_store::Database) -> anyhow::Result<(u64, f64)> {
    let sql = "SELECT * FROM billing_events WHERE tenant = $1 ORDER BY occurred_at, ledger_index";
    let start = Instant::now();
    let rows = if let Some(pool) = raw.as_postgres() {
        sqlx::query(sql)
            .bind(TENANT)
            .fetch(pool)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await?
    } else if let Some(pool) = raw.as_sqlite() {
        sqlx::query(sql)
            .bind(TENANT)
            .fetch(pool)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await?
    } else {
        bail!("unknown engine");
    };
    Ok((rows, start.elapsed().as_secs_f64()))
}

/// One export, timed, with the memory it took.
struct Measured {
    /// Rows of the verified document.
    rows: u64,
    bytes: u64,
    chunks: u64,
    /// First request to signature received.
    secs: f64,
    rss_before: u64,
    rss_peak: u64,
}

/// Exports every seeded row as the operator, then checks the document
/// against its signature and counts its rows (outside the timed window).
async fn export(
    mut client: AnalyticsClient<tonic::transport::Channel>,
    public_key: &[u8; 32],
    rows: u64,
) -> anyhow::Result<Measured> {
    let request = pb::ExportRequest {
        tenant: TENANT.to_owned(),
        from: Some(prost_types::Timestamp {
            seconds: BASE_SECONDS,
            nanos: 0,
        }),
        to: Some(prost_types::Timestamp {
            seconds: BASE_SECONDS + i64::try_from(rows / 1000 + 1)?,
            nanos: 0,
        }),
        tool: String::new(),
        service: String::new(),
    };
    let mut received = tempfile::tempfile()?;
    let mut bytes: u64 = 0;
    let mut chunks: u64 = 0;
    let mut signature = None;

    let rss_before = rss_bytes()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(Arc::clone(&stop));
    let start = Instant::now();
    let mut stream = client.export_billing_ledger(request).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        if let Some(sig) = chunk.signature {
            signature = Some(sig);
            continue;
        }
        bytes += chunk.data.len() as u64;
        chunks += 1;
        received.write_all(&chunk.data)?;
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let rss_peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?
        .max(rss_bytes()?);

    // ---- the export is what it claims: signed, verifying, every row once
    let signature = signature.context("the export ended without a signature")?;
    let mut document = Vec::with_capacity(usize::try_from(bytes)?);
    std::io::Seek::rewind(&mut received)?;
    received.read_to_end(&mut document)?;
    ensure!(
        soma_sign::sha256(&document).as_slice() == signature.sha256.as_slice(),
        "sha256 mismatch"
    );
    soma_sign::verify_ed25519_strict(public_key, &document, &signature.signature)
        .context("the export signature does not verify")?;
    let exported = exported_rows(&document, "billing_ledger")?;
    Ok(Measured {
        rows: exported,
        bytes,
        chunks,
        secs,
        rss_before,
        rss_peak,
    })
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `min..max` of `values`.
fn spread(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.decimals$}..{max:.decimals$}")
}

/// `values`, comma-separated.
fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(",")
}
