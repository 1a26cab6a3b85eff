//! Server CPU per unary call of a real `soma serve` process (the one
//! `soma up` starts), against a bare tonic server in a process of its own,
//! measured the same way in the same run.
//!
//! `mesh_bench` measures the mesh runtime inside its own process; this one
//! measures what an operator actually runs: the `soma serve analytics`
//! child of `soma up`, with its Workload API identity, its tracing
//! subscriber, its database and background tasks, called over mTLS with an
//! operator SVID read from files (`soma ca issue`).
//!
//! Two servers answer `grpc.health.v1.Health/Check`:
//!
//! - baseline: this program started again as a child process with
//!   `--serve-bare`: a plaintext tonic server with tonic-health's
//!   `HealthServer` and nothing else, on the multi-thread runtime
//!   `soma serve` uses;
//! - mesh: the process given by `--pid`, listening on `--addr` as `--server-id`.
//!
//! Each round calls the baseline, then the mesh, open loop: one call
//! launched every `1/--rate` s on its own task for `--seconds` s, over one
//! long-lived HTTP/2 connection per server (the schedule, not the server's
//! pace, decides when calls start). Each server's CPU is `utime + stime` of
//! its whole process from `/proc/PID/stat`, read before and after its part
//! of the round: everything the process did meanwhile (its background tasks
//! included) is charged to the calls, as an operator's `top` would.
//! The ratio is the median of the per-round ratios.
//!
//! Nothing here passes or fails on timing: the targets are printed next to
//! the measurements. The process fails only when a call fails (then the
//! numbers would not describe the RPC).
//!
//! The last lines are `result.<key>=<value>`, for `scripts/bench/mesh.sh`.

#[path = "common/bench.rs"]
#[expect(
    dead_code,
    reason = "the in-process server threads of bench.rs serve the other benchmarks"
)]
mod bench;

use std::future::Future;
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore};
use tokio::io::AsyncReadExt as _;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::bench::{Latencies, clock_ticks_per_second, median, open_loop, progress};

/// Targets set by the issue; printed, never asserted.
const TARGET_CPU_RATIO: f64 = 1.2;
const TARGET_ADDED_P50_US: f64 = 50.0;
const TARGET_ADDED_P99_US: f64 = 200.0;

#[derive(Debug, Parser)]
#[command(about = "Server CPU per call of a real soma serve process against bare tonic in its own process")]
struct Args {
    /// Serve a bare plaintext tonic health server, print its address, and
    /// stop when standard input closes (the baseline child).
    #[arg(long)]
    serve_bare: bool,
    /// The mesh server's mTLS gRPC address.
    #[arg(long, required_unless_present = "serve_bare")]
    addr: Option<SocketAddr>,
    /// The mesh server's process id (its CPU is read from /proc/PID/stat).
    #[arg(long, required_unless_present = "serve_bare")]
    pid: Option<u32>,
    /// The mesh server's SPIFFE ID, e.g. spiffe://somastack.local/svc/analytics.
    #[arg(long, required_unless_present = "serve_bare")]
    server_id: Option<String>,
    /// Directory with the caller's svid.pem, key.pem and bundle.pem
    /// (`soma ca issue --spiffe-id spiffe://TD/operator/NAME --out DIR`).
    #[arg(long, required_unless_present = "serve_bare")]
    svid_dir: Option<PathBuf>,
    /// Calls per second, per server.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Seconds per server and round.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds (baseline and mesh alternate within each).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Closed-loop calls per server before the first round.
    #[arg(long, default_value_t = 2_000)]
    warmup: u32,
    /// Seconds each server is watched idle before the rounds (printed as
    /// context: the part of a process's CPU no call causes).
    #[arg(long, default_value_t = 3)]
    idle_seconds: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_bare {
        return serve_bare();
    }
    ensure!(
        args.rate > 0 && args.seconds > 0 && args.rounds > 0,
        "--rate, --seconds and --rounds must be greater than zero"
    );
    let ticks_per_second = clock_ticks_per_second()?;
    let (Some(addr), Some(pid), Some(server_id), Some(svid_dir)) = (
        args.addr,
        args.pid,
        args.server_id.as_deref(),
        args.svid_dir.as_deref(),
    ) else {
        bail!("--addr, --pid, --server-id and --svid-dir are required");
    };
    let server_id = SpiffeId::parse(server_id).context("--server-id")?;
    let client = read_identity(svid_dir)?;
    let mesh = Process::at(pid, ticks_per_second)?;

    let mut bare = BareChild::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args, &bare, &mesh, addr, client, server_id));
    drop(runtime);
    let stopped = bare.stop();
    let report = report?;
    stopped?;
    report.print(&args, pid, bare.pid());
    Ok(())
}

/// Reads the caller's SVID, key and trust bundle from `dir`.
fn read_identity(dir: &Path) -> anyhow::Result<Arc<SvidStore>> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let svid = Svid::from_pem(&read("svid.pem")?, &read("key.pem")?).context("the caller's svid")?;
    let id = svid.spiffe_id().clone();
    let mut bundles = BundleSet::new();
    bundles.insert(Bundle::from_pem(id.trust_domain().clone(), &read("bundle.pem")?).context("the bundle")?);
    Ok(SvidStore::new(id, svid, bundles)?)
}

async fn run(
    args: &Args,
    bare: &BareChild,
    mesh: &Process,
    mesh_addr: SocketAddr,
    client: Arc<SvidStore>,
    server_id: SpiffeId,
) -> anyhow::Result<Report> {
    let bare_channel = Endpoint::from_shared(format!("http://{}", bare.addr))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the bare server")?;
    let mesh_channel = soma_mesh::channel(client, mesh_addr, server_id)?;
    let bare_check = || check(HealthClient::new(bare_channel.clone()));
    let mesh_check = || check(HealthClient::new(mesh_channel.clone()));

    bench::closed_loop(args.warmup.max(1), bare_check)
        .await
        .context("bare warm-up")?;
    bench::closed_loop(args.warmup.max(1), mesh_check)
        .await
        .context("mesh warm-up (is the caller an operator of the server's trust domain?)")?;

    let idle = Duration::from_secs(u64::from(args.idle_seconds));
    let (bare_idle, mesh_idle) = if idle.is_zero() {
        (f64::NAN, f64::NAN)
    } else {
        progress(&format!(
            "idle: watching both servers for {} s",
            args.idle_seconds
        ));
        let (b0, m0) = (bare.process.cpu()?, mesh.cpu()?);
        tokio::time::sleep(idle).await;
        let (b1, m1) = (bare.process.cpu()?, mesh.cpu()?);
        let per_second = |d: Duration| d.as_secs_f64() * 1e6 / idle.as_secs_f64();
        (
            per_second(b1.saturating_sub(b0)),
            per_second(m1.saturating_sub(m0)),
        )
    };

    let period = Duration::from_secs(1) / args.rate;
    let duration = Duration::from_secs(u64::from(args.seconds));
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let b = measure(&bare.process, period, duration, bare_check)
            .await
            .context("bare open loop")?;
        let m = measure(mesh, period, duration, mesh_check)
            .await
            .context("mesh open loop")?;
        progress(&format!(
            "round {round}: server CPU per call  bare {:>7.2} µs  mesh {:>7.2} µs  ratio {:.3}   \
             p50 {:.1} / {:.1} µs   p99 {:.1} / {:.1} µs   ({} / {} calls, {:.0} / {:.0} launched/s)",
            b.cpu_us_per_call(),
            m.cpu_us_per_call(),
            m.cpu_us_per_call() / b.cpu_us_per_call(),
            b.latencies.percentile_us(50.0),
            m.latencies.percentile_us(50.0),
            b.latencies.percentile_us(99.0),
            m.latencies.percentile_us(99.0),
            b.latencies.samples.len(),
            m.latencies.samples.len(),
            b.latencies.achieved_rate(),
            m.latencies.achieved_rate(),
        ));
        rounds.push((b, m));
    }
    Ok(Report {
        rounds,
        bare_idle_us_per_s: bare_idle,
        mesh_idle_us_per_s: mesh_idle,
    })
}

/// One open-loop run against one server, with the CPU its process spent.
async fn measure<F, Fut>(
    server: &Process,
    period: Duration,
    duration: Duration,
    call: F,
) -> anyhow::Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let before = server.cpu()?;
    let before_sched = server.sched();
    let latencies = open_loop(period, duration, call).await?;
    let after = server.cpu()?;
    let after_sched = server.sched();
    Ok(Sample {
        cpu: after.saturating_sub(before),
        sched: after_sched.zip(before_sched).map(|(a, b)| a.saturating_sub(b)),
        latencies,
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

/// A server process whose CPU time is read from `/proc`.
#[derive(Debug)]
struct Process {
    pid: u32,
    ticks_per_second: u64,
}

impl Process {
    fn at(pid: u32, ticks_per_second: u64) -> anyhow::Result<Self> {
        let process = Self {
            pid,
            ticks_per_second,
        };
        process
            .cpu()
            .with_context(|| format!("no process {pid} to measure"))?;
        Ok(process)
    }

    /// `utime + stime` of the whole process (every thread, live or ended)
    /// from `/proc/PID/stat`.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name (field 2) may hold spaces and parentheses: the
        // fields are counted from the last ')'. utime and stime are fields
        // 14 and 15, so the 12th and 13th after it.
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .with_context(|| format!("{path}: no ')'"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> anyhow::Result<u64> {
            let v = fields.get(i).with_context(|| format!("{path}: too few fields"))?;
            v.parse().with_context(|| format!("{path}: field {v:?}"))
        };
        let ticks = field(11)? + field(12)?;
        Ok(Duration::from_nanos(
            ticks * 1_000_000_000 / self.ticks_per_second,
        ))
    }

    /// Time on CPU of the process's live threads from their `schedstat`
    /// (nanoseconds; a cross-check of the tick-grained `stat`), when the
    /// kernel keeps it.
    fn sched(&self) -> Option<Duration> {
        let mut total = Duration::ZERO;
        for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()? {
            let text = std::fs::read_to_string(entry.ok()?.path().join("schedstat")).ok()?;
            let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
            total += Duration::from_nanos(nanos);
        }
        Some(total)
    }
}

/// The baseline server: this program with `--serve-bare`, a child process.
struct BareChild {
    child: Child,
    /// Held open: the child stops when it closes.
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    process: Process,
}

impl BareChild {
    fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this program")?;
        let mut child = Command::new(exe)
            .arg("--serve-bare")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the bare server")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the bare server's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the bare server's address")?;
        let addr: SocketAddr = match line.trim().parse() {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the bare server printed {line:?} instead of its address: {e}");
            }
        };
        let process = Process::at(child.id(), clock_ticks_per_second()?)?;
        Ok(Self {
            child,
            stdin,
            addr,
            process,
        })
    }

    fn pid(&self) -> u32 {
        self.process.pid
    }

    /// Closes the child's input and waits for it to exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for the bare server")?;
        ensure!(status.success(), "the bare server exited with {status}");
        Ok(())
    }
}

/// `--serve-bare`: tonic-health's server, plaintext, no layers, on the
/// multi-thread runtime `soma serve` uses; its address on standard output;
/// serves until standard input closes.
fn serve_bare() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (reporter, health) = tonic_health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        announce(addr)?;
        // The reporter lives as long as the server: it owns the statuses.
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async {
                let mut sink = Vec::new();
                let _ = tokio::io::stdin().read_to_end(&mut sink).await;
            })
            .await
            .context("bare server")
    })
}

#[expect(clippy::print_stdout, reason = "the address line is the child's output")]
fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    println!("{addr}");
    std::io::stdout().flush().context("writing the address")
}

/// One server's part of one round.
#[derive(Debug)]
struct Sample {
    /// `utime + stime` of its process during the calls.
    cpu: Duration,
    /// Time on CPU of its live threads during the calls, from `schedstat`.
    sched: Option<Duration>,
    latencies: Latencies,
}

impl Sample {
    #[expect(clippy::cast_precision_loss, reason = "a call count far below 2^52")]
    fn cpu_us_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.latencies.samples.len() as f64
    }

    #[expect(clippy::cast_precision_loss, reason = "a call count far below 2^52")]
    fn sched_us_per_call(&self) -> Option<f64> {
        self.sched
            .map(|s| s.as_secs_f64() * 1e6 / self.latencies.samples.len() as f64)
    }
}

#[derive(Debug)]
struct Report {
    rounds: Vec<(Sample, Sample)>,
    bare_idle_us_per_s: f64,
    mesh_idle_us_per_s: f64,
}

impl Report {
    #[expect(clippy::print_stdout, reason = "the benchmark's output")]
    fn print(&self, args: &Args, mesh_pid: u32, bare_pid: u32) {
        let median = |f: &dyn Fn(&(Sample, Sample)) -> f64| median(self.rounds.iter().map(f).collect());
        let bare_cpu = median(&|r| r.0.cpu_us_per_call());
        let mesh_cpu = median(&|r| r.1.cpu_us_per_call());
        let ratio = median(&|r| r.1.cpu_us_per_call() / r.0.cpu_us_per_call());
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r.1.cpu_us_per_call() / r.0.cpu_us_per_call())
            .collect();
        let spread = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let sched_ratio = median(&|r| {
            r.1.sched_us_per_call().unwrap_or(f64::NAN) / r.0.sched_us_per_call().unwrap_or(f64::NAN)
        });
        let b50 = median(&|r| r.0.latencies.percentile_us(50.0));
        let b99 = median(&|r| r.0.latencies.percentile_us(99.0));
        let m50 = median(&|r| r.1.latencies.percentile_us(50.0));
        let m99 = median(&|r| r.1.latencies.percentile_us(99.0));
        let calls = median(&|r| {
            #[expect(clippy::cast_precision_loss, reason = "a call count far below 2^52")]
            let n = r.1.latencies.samples.len() as f64;
            n
        });

        println!();
        println!(
            "== unary grpc.health.v1.Health/Check, open loop at {} calls/s, {} s per server and round, {} rounds",
            args.rate, args.seconds, args.rounds
        );
        println!(
            "   server CPU = utime+stime of the whole server process (/proc/PID/stat); median of rounds"
        );
        println!("   bare tonic, plaintext (pid {bare_pid})     {bare_cpu:>8.2} µs/call");
        println!("   real soma serve, mTLS (pid {mesh_pid})     {mesh_cpu:>8.2} µs/call");
        println!(
            "   ratio mesh/bare (median of rounds)       {ratio:>8.3}x   (target <= {TARGET_CPU_RATIO}x; per round {}; spread {spread:.3})",
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("   schedstat cross-check ratio              {sched_ratio:>8.3}x");
        println!(
            "   idle CPU before the rounds               bare {:.0} µs/s, mesh {:.0} µs/s",
            self.bare_idle_us_per_s, self.mesh_idle_us_per_s
        );
        println!(
            "   latency p50  bare {b50:>8.1} µs  mesh {m50:>8.1} µs  added {:>+7.1} µs  (target <= +{TARGET_ADDED_P50_US} µs)",
            m50 - b50
        );
        println!(
            "   latency p99  bare {b99:>8.1} µs  mesh {m99:>8.1} µs  added {:>+7.1} µs  (target <= +{TARGET_ADDED_P99_US} µs)",
            m99 - b99
        );
        println!();
        println!("result.real_cpu_us_baseline={bare_cpu:.3}");
        println!("result.real_cpu_us_mesh={mesh_cpu:.3}");
        println!("result.real_cpu_ratio={ratio:.4}");
        println!("result.real_cpu_ratio_spread={spread:.4}");
        println!(
            "result.real_cpu_ratio_rounds={}",
            ratios
                .iter()
                .map(|r| format!("{r:.4}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        println!("result.real_cpu_ratio_sched={sched_ratio:.4}");
        println!("result.real_cpu_ratio_target={TARGET_CPU_RATIO}");
        println!("result.real_calls_per_round={calls:.0}");
        println!(
            "result.real_idle_us_per_s_baseline={:.0}",
            self.bare_idle_us_per_s
        );
        println!("result.real_idle_us_per_s_mesh={:.0}", self.mesh_idle_us_per_s);
        println!("result.real_p50_us_baseline={b50:.1}");
        println!("result.real_p99_us_baseline={b99:.1}");
        println!("result.real_p50_us_mesh={m50:.1}");
        println!("result.real_p99_us_mesh={m99:.1}");
        println!("result.real_p50_us_added={:.1}", m50 - b50);
        println!("result.real_p99_us_added={:.1}", m99 - b99);
        println!("result.real_p50_us_added_target={TARGET_ADDED_P50_US}");
        println!("result.real_p99_us_added_target={TARGET_ADDED_P99_US}");
    }
}
