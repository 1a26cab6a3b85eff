//! Unary RPC cost of the mesh runtime, against a bare tonic server measured
//! in the same run.
//!
//! Two servers answer `grpc.health.v1.Health/Check`:
//!
//! - baseline: a plaintext tonic server with tonic-health's `HealthServer`
//!   and nothing else (no TLS, no layers);
//! - mesh: the full `soma_mesh::Application` of the Gateway service (mTLS
//!   with SVIDs minted at run time by a development authority in a temp dir,
//!   per-method authorization, health, reflection), called by a
//!   `/operator/bench` SVID.
//!
//! Each server runs alone on its own OS thread with a current-thread tokio
//! runtime, so the server's whole CPU time is the `utime + stime` of that
//! thread and of its runtime's blocking pool (`/proc/self/task/<tid>/stat`;
//! `schedstat` gives the same in nanoseconds where the kernel has it; see
//! `common/bench.rs`). The client runs on the main thread's runtime.
//!
//! Two measurements:
//!
//! 1. closed loop: after a warm-up, `--requests` calls one after the other on
//!    one HTTP/2 connection; server CPU per request, in alternating rounds;
//! 2. open loop: one call launched every `1/--rate` s on its own task for
//!    `--seconds` s, over one long-lived connection per server; p50 and p99.
//!
//! Nothing here passes or fails on timing: the targets are printed next to
//! the measurements. The process fails only when a call fails (then the
//! numbers would not describe the RPC).
//!
//! The last lines are `result.<key>=<value>`, for `scripts/bench/mesh.sh`.

#[path = "common/bench.rs"]
mod bench;
#[path = "common/gateway.rs"]
mod gateway;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use soma_ca::Authority;
use soma_identity::{SpiffeId, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, ServiceKind};
use soma_store::{Database, StoreSettings};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::bench::{
    CpuSample, Latencies, Serve, ServerThread, Started, clock_ticks_per_second, closed_loop, identity,
    measure_cpu, open_loop, progress,
};

const TRUST_DOMAIN: &str = "somastack.bench";
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Targets set by the issue; printed, never asserted.
const TARGET_CPU_RATIO: f64 = 1.2;
const TARGET_ADDED_P50_US: f64 = 50.0;
const TARGET_ADDED_P99_US: f64 = 200.0;

#[derive(Debug, Parser)]
#[command(about = "Server CPU per call and latency of the mesh runtime against bare tonic")]
struct Args {
    /// Closed-loop calls measured per round and server.
    #[arg(long, default_value_t = 20_000)]
    requests: u32,
    /// Closed-loop calls before measuring, per server.
    #[arg(long, default_value_t = 2_000)]
    warmup: u32,
    /// Closed-loop rounds (baseline and mesh alternate).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Open-loop calls per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Open-loop duration per server, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.rounds == 0 || args.rate == 0 || args.seconds == 0 {
        bail!("--requests, --rounds, --rate and --seconds must be greater than zero");
    }
    let ticks_per_second = clock_ticks_per_second()?;

    let ca_dir = tempfile::tempdir()?;
    let data_dir = tempfile::tempdir()?;
    let authority = Authority::open_or_create(ca_dir.path(), &TrustDomain::parse(TRUST_DOMAIN)?)
        .context("opening the authority")?;
    let server_store = identity(&authority, &ServiceKind::Gateway.spiffe_path())?;
    let client_store = identity(&authority, "/operator/bench")?;
    let server_id = server_store.own_id().clone();

    let baseline = ServerThread::spawn("bench-baseline", |stop| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (reporter, health) = tonic_health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let serve: Serve = Box::pin(async move {
            // The reporter lives as long as the server: it owns the statuses.
            let _reporter = reporter;
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.await;
                })
                .await
                .context("baseline server")
        });
        Ok(Started {
            addr,
            serve,
            metrics: None,
        })
    })?;

    let db_dir = data_dir.path().to_owned();
    let db_dir_for_gateway = db_dir.clone();
    let mesh = ServerThread::spawn("bench-mesh", move |stop| async move {
        let kind = ServiceKind::Gateway;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = Database::connect(&StoreSettings::sqlite(db_dir), kind.name()).await?;
        db.migrate(&soma_gateway::MIGRATIONS).await?;
        let spec = gateway::gateway_spec(db, &settings, &server_store, &db_dir_for_gateway).await?;
        let app = Application::build(settings, server_store, None, spec).await?;
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

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(
        &args,
        ticks_per_second,
        &baseline,
        &mesh,
        client_store,
        server_id,
    ));
    // The channels are gone with the client runtime; stop the servers either way.
    drop(runtime);
    let stopped = baseline.stop().and(mesh.stop());
    let report = report?;
    stopped?;
    report.print(&args);
    Ok(())
}

async fn run(
    args: &Args,
    ticks_per_second: u64,
    baseline: &ServerThread,
    mesh: &ServerThread,
    client_store: Arc<SvidStore>,
    server_id: SpiffeId,
) -> anyhow::Result<Report> {
    let baseline_channel = Endpoint::from_shared(format!("http://{}", baseline.addr))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the baseline server")?;
    let mesh_channel = soma_mesh::channel(client_store, mesh.addr, server_id)?;

    let baseline_check = || check(HealthClient::new(baseline_channel.clone()));
    let mesh_check = || check(HealthClient::new(mesh_channel.clone()));
    closed_loop(args.warmup.max(1), baseline_check)
        .await
        .context("baseline warm-up")?;
    closed_loop(args.warmup.max(1), mesh_check)
        .await
        .context("mesh warm-up")?;
    let dispatched_before = mesh.dispatched(CHECK_PATH);

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let b = measure_cpu(baseline, args.requests, ticks_per_second, baseline_check).await?;
        let m = measure_cpu(mesh, args.requests, ticks_per_second, mesh_check).await?;
        let line = format!(
            "round {round}: server CPU per call  baseline {:>7.2} µs  mesh {:>7.2} µs  ratio {:.3}   \
             (schedstat: {} / {})   throughput {:.0} / {:.0} calls/s",
            b.cpu_us_per_call(),
            m.cpu_us_per_call(),
            m.cpu_us_per_call() / b.cpu_us_per_call(),
            b.sched_us_per_call()
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} µs")),
            m.sched_us_per_call()
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} µs")),
            b.calls_per_second(),
            m.calls_per_second(),
        );
        progress(&line);
        rounds.push((b, m));
    }
    let dispatched = mesh.dispatched(CHECK_PATH).saturating_sub(dispatched_before);

    let period = Duration::from_secs(1) / args.rate;
    let duration = Duration::from_secs(u64::from(args.seconds));
    progress(&format!(
        "open loop: baseline, {} calls/s for {} s",
        args.rate, args.seconds
    ));
    let baseline_latency = open_loop(period, duration, baseline_check)
        .await
        .context("baseline open loop")?;
    progress(&format!(
        "open loop: mesh, {} calls/s for {} s",
        args.rate, args.seconds
    ));
    let mesh_latency = open_loop(period, duration, mesh_check)
        .await
        .context("mesh open loop")?;

    Ok(Report {
        rounds,
        dispatched,
        baseline_latency,
        mesh_latency,
    })
}

/// One Check of the whole server, which must answer SERVING.
async fn check(mut client: HealthClient<Channel>) -> anyhow::Result<()> {
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    if response.status != ServingStatus::Serving as i32 {
        bail!(
            "health check answered status {}, expected SERVING",
            response.status
        );
    }
    Ok(())
}

#[derive(Debug)]
struct Report {
    rounds: Vec<(CpuSample, CpuSample)>,
    dispatched: u64,
    baseline_latency: Latencies,
    mesh_latency: Latencies,
}

impl Report {
    #[expect(clippy::print_stdout, reason = "the benchmark's output")]
    fn print(&self, args: &Args) {
        let median =
            |f: &dyn Fn(&(CpuSample, CpuSample)) -> f64| bench::median(self.rounds.iter().map(f).collect());
        let base_cpu = median(&|r| r.0.cpu_us_per_call());
        let mesh_cpu = median(&|r| r.1.cpu_us_per_call());
        let ratio = median(&|r| r.1.cpu_us_per_call() / r.0.cpu_us_per_call());
        let sched = self
            .rounds
            .iter()
            .all(|(b, m)| b.sched.is_some() && m.sched.is_some());
        let (base_b, lat_m) = (&self.baseline_latency, &self.mesh_latency);
        let (b50, b99, m50, m99) = (
            base_b.percentile_us(50.0),
            base_b.percentile_us(99.0),
            lat_m.percentile_us(50.0),
            lat_m.percentile_us(99.0),
        );
        let expected = u64::from(args.requests) * u64::from(args.rounds);

        println!();
        println!(
            "== unary grpc.health.v1.Health/Check: server CPU per call (closed loop, one HTTP/2 connection)"
        );
        println!(
            "   {} rounds x {} calls per server after {} warm-up calls; median of rounds",
            args.rounds, args.requests, args.warmup
        );
        println!("   baseline (bare tonic, plaintext)  {base_cpu:>8.2} µs/call");
        println!("   mesh (mTLS + authz, Gateway)      {mesh_cpu:>8.2} µs/call");
        println!("   ratio mesh/baseline               {ratio:>8.3}x   (target <= {TARGET_CPU_RATIO}x)");
        if sched {
            let sb = median(&|r| r.0.sched_us_per_call().unwrap_or(f64::NAN));
            let sm = median(&|r| r.1.sched_us_per_call().unwrap_or(f64::NAN));
            println!(
                "   schedstat cross-check             {sb:.2} / {sm:.2} µs/call, ratio {:.3}x",
                sm / sb
            );
        }
        println!(
            "   mesh authorization dispatched {} of {expected} measured calls",
            self.dispatched
        );
        println!();
        println!(
            "== latency, open loop at {} calls/s for {} s per server (one long-lived connection each)",
            args.rate, args.seconds
        );
        println!(
            "   baseline  p50 {b50:>8.1} µs  p99 {b99:>8.1} µs  ({} calls, {:.0} launched/s)",
            base_b.samples.len(),
            base_b.achieved_rate()
        );
        println!(
            "   mesh      p50 {m50:>8.1} µs  p99 {m99:>8.1} µs  ({} calls, {:.0} launched/s)",
            lat_m.samples.len(),
            lat_m.achieved_rate()
        );
        println!(
            "   added     p50 {:>8.1} µs  p99 {:>8.1} µs  (targets <= {TARGET_ADDED_P50_US} µs p50, <= {TARGET_ADDED_P99_US} µs p99)",
            m50 - b50,
            m99 - b99
        );
        println!();
        println!("result.cpu_us_baseline={base_cpu:.3}");
        println!("result.cpu_us_mesh={mesh_cpu:.3}");
        println!("result.cpu_ratio={ratio:.4}");
        println!("result.cpu_ratio_target={TARGET_CPU_RATIO}");
        println!("result.dispatched={}", self.dispatched);
        println!("result.dispatched_expected={expected}");
        println!("result.p50_us_baseline={b50:.1}");
        println!("result.p99_us_baseline={b99:.1}");
        println!("result.p50_us_mesh={m50:.1}");
        println!("result.p99_us_mesh={m99:.1}");
        println!("result.p50_us_added={:.1}", m50 - b50);
        println!("result.p99_us_added={:.1}", m99 - b99);
        println!("result.p50_us_added_target={TARGET_ADDED_P50_US}");
        println!("result.p99_us_added_target={TARGET_ADDED_P99_US}");
    }
}
