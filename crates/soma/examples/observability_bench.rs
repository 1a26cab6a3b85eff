//! What observability costs the mesh runtime, against the same runtime
//! without its metrics, measured in the same run.
//!
//! Two Gateway `soma_mesh::Application`s answer
//! `grpc.health.v1.Health/Check` over mTLS, each alone on its own OS thread
//! (see `common/bench.rs`): one with metrics on (the default), one with
//! `SOMA_METRICS=off`. Both run under this process's telemetry, configured
//! by the standard `OTEL_*` variables exactly as a service is (the script
//! runs it once with `OTEL_TRACES_SAMPLER=always_off` and once with
//! `always_on` to a live OTLP receiver). Closed-loop rounds alternate
//! between the two servers; the figure is server CPU per call, on / off.
//!
//! While the metrics-on server is under closed-loop load, a thread scrapes
//! its admin `/metrics` over HTTP/1.1 every 50 ms and records how long each
//! scrape takes (the target: 5 ms at most).
//!
//! The last lines are `result.<key>=<value>`, for
//! `scripts/bench/observability.sh`. Nothing passes or fails on timing.

#[path = "common/bench.rs"]
#[expect(
    dead_code,
    reason = "the helpers serve several benchmarks; this one needs no open loop"
)]
mod bench;
#[path = "common/gateway.rs"]
mod gateway;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use soma_ca::Authority;
use soma_identity::TrustDomain;
use soma_mesh::{Application, MeshSettings, ServiceKind};
use soma_store::{Database, StoreSettings};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::bench::{
    Serve, ServerThread, Started, clock_ticks_per_second, closed_loop, identity, measure_cpu, progress,
};

const TRUST_DOMAIN: &str = "somastack.bench";
const TARGET_CPU_GROWTH: f64 = 1.05;
const TARGET_SCRAPE_MS: f64 = 5.0;

#[derive(Debug, Parser)]
#[command(about = "Server CPU per call with metrics on against off, and /metrics scrape time under load")]
struct Args {
    /// Closed-loop calls measured per round and server.
    #[arg(long, default_value_t = 20_000)]
    requests: u32,
    /// Closed-loop calls before measuring, per server.
    #[arg(long, default_value_t = 2_000)]
    warmup: u32,
    /// Rounds (off and on alternate).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

#[expect(clippy::print_stdout, reason = "the benchmark's output")]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.rounds == 0 {
        bail!("--requests and --rounds must be greater than zero");
    }
    let ticks_per_second = clock_ticks_per_second()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The exporter's channel lives on this runtime, driven while it runs.
    let telemetry = {
        let _entered = runtime.enter();
        soma_mesh::Telemetry::init("somastack-bench", soma_mesh::LogStyle::Text { ansi: false })
    };

    let ca_dir = tempfile::tempdir()?;
    let authority = Authority::open_or_create(ca_dir.path(), &TrustDomain::parse(TRUST_DOMAIN)?)
        .context("opening the authority")?;
    let client_store = identity(&authority, "/operator/bench")?;
    let server_id =
        soma_identity::SpiffeId::from_parts(authority.trust_domain(), &ServiceKind::Gateway.spiffe_path())?;
    let mut servers = Vec::new();
    let mut admin_of_on = None;
    for metrics in ["off", "on"] {
        let store = identity(&authority, &ServiceKind::Gateway.spiffe_path())?;
        let data = tempfile::tempdir()?;
        let admin = Arc::new(OnceLock::<SocketAddr>::new());
        let admin_set = Arc::clone(&admin);
        let db_dir = data.path().to_owned();
        let server = ServerThread::spawn(&format!("bench-m-{metrics}"), move |stop| async move {
            let kind = ServiceKind::Gateway;
            let settings = MeshSettings::load(kind, None, |name| {
                (name == "SOMA_METRICS").then(|| metrics.to_owned())
            })?;
            let db = Database::connect(&StoreSettings::sqlite(db_dir.clone()), kind.name()).await?;
            db.migrate(&soma_gateway::MIGRATIONS).await?;
            let spec = gateway::gateway_spec(db, &settings, &store, &db_dir).await?;
            let app = Application::build(settings, store, None, spec).await?;
            let _ = admin_set.set(app.admin_addr());
            let (addr, metrics) = (app.local_addr(), app.metrics());
            let serve: Serve = Box::pin(async move {
                app.run_until_stopped(async move {
                    let _ = stop.await;
                })
                .await
                .context("mesh server")
            });
            Ok(Started {
                addr,
                serve,
                metrics: Some(metrics),
            })
        })?;
        if metrics == "on" {
            admin_of_on = admin.get().copied();
        }
        servers.push((metrics, server, data));
    }
    let admin = admin_of_on.context("the metrics-on server has no admin address")?;

    let result = runtime.block_on(async {
        let channels: Vec<Channel> = servers
            .iter()
            .map(|(_, server, _)| {
                soma_mesh::channel(Arc::clone(&client_store), server.addr, server_id.clone())
            })
            .collect::<Result<_, _>>()?;
        for channel in &channels {
            closed_loop(args.warmup.max(1), || check(channel.clone())).await?;
        }
        let mut off = Vec::new();
        let mut on = Vec::new();
        let mut scrapes = Vec::new();
        for round in 1..=args.rounds {
            let a = measure_cpu(&servers[0].1, args.requests, ticks_per_second, || {
                check(channels[0].clone())
            })
            .await?;
            let scraping = Scraper::start(admin);
            let b = measure_cpu(&servers[1].1, args.requests, ticks_per_second, || {
                check(channels[1].clone())
            })
            .await?;
            scrapes.extend(scraping.stop()?);
            progress(&format!(
                "round {round}: server CPU per call  metrics off {:>7.2} µs  on {:>7.2} µs  ratio {:.3}   \
                 (schedstat: {} / {})   throughput {:.0} / {:.0} calls/s",
                a.cpu_us_per_call(),
                b.cpu_us_per_call(),
                b.cpu_us_per_call() / a.cpu_us_per_call(),
                a.sched_us_per_call()
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} µs")),
                b.sched_us_per_call()
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} µs")),
                a.calls_per_second(),
                b.calls_per_second(),
            ));
            off.push(a.cpu_us_per_call());
            on.push(b.cpu_us_per_call());
        }
        // The switch did what it says: the server with metrics off counted
        // nothing, the other every call.
        let path = "/grpc.health.v1.Health/Check";
        if servers[0].1.dispatched(path) != 0 {
            bail!("the metrics-off server counted calls");
        }
        let expected = u64::from(args.requests) * u64::from(args.rounds);
        if servers[1].1.dispatched(path) < expected {
            bail!("the metrics-on server counted fewer than {expected} calls");
        }
        anyhow::Ok((off, on, scrapes))
    });
    // Flushing blocks: it runs beside the runtime that carries the
    // exporter's connection, which must keep running meanwhile.
    let flushed = runtime.block_on(async { tokio::task::spawn_blocking(move || telemetry.shutdown()).await });
    drop(runtime);
    flushed?;
    for (_, server, _) in servers {
        server.stop()?;
    }
    let (off, on, mut scrapes) = result?;
    let off_total: f64 = off.iter().sum();
    let on_total: f64 = on.iter().sum();
    let ratio = on_total / off_total;
    scrapes.sort_by(f64::total_cmp);
    let p50 = scrapes.get(scrapes.len() / 2).copied().unwrap_or(f64::NAN);
    let max = scrapes.last().copied().unwrap_or(f64::NAN);
    let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_else(|_| "(unset)".to_owned());
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok();
    println!("== observability cost (sampler {sampler}, exporting {exporting})");
    println!(
        "   server CPU per call, metrics off   {:>8.2} µs",
        off_total / off.len() as f64
    );
    println!(
        "   server CPU per call, metrics on    {:>8.2} µs",
        on_total / on.len() as f64
    );
    println!(
        "   ratio on/off                        {ratio:>8.3}x   (target <= {TARGET_CPU_GROWTH}x at 0 % sampling)"
    );
    println!(
        "   /metrics scrape under load: {} scrapes, p50 {p50:.2} ms, max {max:.2} ms   (target <= {TARGET_SCRAPE_MS} ms)",
        scrapes.len()
    );
    println!("result.sampler={sampler}");
    println!("result.cpu_us_off={:.3}", off_total / off.len() as f64);
    println!("result.cpu_us_on={:.3}", on_total / on.len() as f64);
    println!("result.cpu_ratio={ratio:.4}");
    println!("result.cpu_ratio_target={TARGET_CPU_GROWTH}");
    println!("result.scrape_ms_p50={p50:.3}");
    println!("result.scrape_ms_max={max:.3}");
    println!("result.scrape_ms_target={TARGET_SCRAPE_MS}");
    Ok(())
}

/// One Check, which must answer.
async fn check(channel: Channel) -> anyhow::Result<()> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(())
}

/// Scrapes `/metrics` every 50 ms on its own thread, timing each.
struct Scraper {
    stop: Arc<AtomicBool>,
    times: Arc<Mutex<Vec<f64>>>,
    join: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Scraper {
    fn start(admin: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let times = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, sink) = (Arc::clone(&stop), Arc::clone(&times));
        let join = std::thread::spawn(move || -> anyhow::Result<()> {
            while !stop_flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                let mut tcp = std::net::TcpStream::connect(admin)?;
                tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
                let mut body = Vec::new();
                tcp.read_to_end(&mut body)?;
                let elapsed = start.elapsed().as_secs_f64() * 1e3;
                if !body.starts_with(b"HTTP/1.1 200") {
                    bail!(
                        "/metrics answered {}",
                        String::from_utf8_lossy(&body[..body.len().min(40)])
                    );
                }
                sink.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(elapsed);
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        });
        Self { stop, times, join }
    }

    fn stop(self) -> anyhow::Result<Vec<f64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.join
            .join()
            .map_err(|_| anyhow::anyhow!("the scraper panicked"))??;
        let times = std::mem::take(&mut *self.times.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        Ok(times)
    }
}
