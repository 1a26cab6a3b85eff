//! What the benchmark examples share: a server alone on its OS thread with a
//! current-thread tokio runtime, the CPU time of that server's threads from
//! `/proc`, closed- and open-loop drivers, and latency percentiles.
//!
//! Included with `#[path]` by `mesh_bench.rs` and `edge_bench.rs`, so that
//! both measure CPU and latency the same way.
//!
//! A server's CPU time is the sum of `utime + stime` over every thread of
//! this process whose name is the server's name: the thread that drives its
//! runtime and the runtime's blocking pool, which is named alike and kept
//! alive for the whole run (a blocking thread that ended would take its CPU
//! time with it). `schedstat` gives the same in nanoseconds where the kernel
//! keeps it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use soma_ca::{Authority, IssueOptions};
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore};
use soma_mesh::Metrics;
use tokio::sync::oneshot;

/// Longest thread name Linux keeps (`comm` holds 15 bytes).
const MAX_THREAD_NAME: usize = 15;

/// A server's serving future, run on its own thread until stopped.
pub type Serve = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

/// What a server thread's start-up hands back.
pub struct Started {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Serves until the stop signal given to the start-up resolves.
    pub serve: Serve,
    /// The mesh runtime's metrics, when the server is one.
    pub metrics: Option<Metrics>,
}

/// A server alone on its OS thread, with a current-thread runtime.
#[derive(Debug)]
pub struct ServerThread {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The name of its threads (the runtime's and its blocking pool's).
    name: String,
    metrics: Option<Metrics>,
    stop: oneshot::Sender<()>,
    join: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl ServerThread {
    /// Starts `start` on a new thread named `name` (at most 15 bytes, unique
    /// in the process) and waits until it listens.
    pub fn spawn<F, Fut>(name: &str, start: F) -> anyhow::Result<Self>
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Started>>,
    {
        if name.is_empty() || name.len() > MAX_THREAD_NAME {
            bail!("thread name {name:?} must be 1 to {MAX_THREAD_NAME} bytes: /proc keeps no more");
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel();
        let thread_name = name.to_owned();
        let join = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve_on_this_thread(thread_name, start, stop_rx, ready_tx))?;
        let (addr, metrics) = ready_rx
            .recv()
            .context("the server thread ended before it listened")??;
        Ok(Self {
            addr,
            name: name.to_owned(),
            metrics,
            stop,
            join,
        })
    }

    /// CPU time of the server's threads so far.
    pub fn cpu(&self, ticks_per_second: u64) -> anyhow::Result<CpuTime> {
        CpuTime::of_threads_named(&self.name, ticks_per_second)
    }

    /// Calls of `path` that passed the mesh's authorization (0 when the
    /// server is not a mesh runtime).
    pub fn dispatched(&self, path: &str) -> u64 {
        self.metrics.as_ref().map_or(0, |m| m.dispatched_count(path))
    }

    /// Signals the server to stop and waits for its thread.
    pub fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match self.join.join() {
            Ok(result) => result,
            Err(_) => bail!("the server thread {} panicked", self.name),
        }
    }
}

/// Builds the server's runtime on the calling thread, starts the server,
/// reports its address (or why it could not start) on `ready`, and serves
/// until stopped.
fn serve_on_this_thread<F, Fut>(
    name: String,
    start: F,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<anyhow::Result<(SocketAddr, Option<Metrics>)>>,
) -> anyhow::Result<()>
where
    F: FnOnce(oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = anyhow::Result<Started>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(name)
        // Blocking threads live as long as the run, so that the CPU time
        // they spent stays in /proc.
        .thread_keep_alive(Duration::from_secs(24 * 3600))
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return Ok(());
        }
    };
    runtime.block_on(async move {
        match start(stop).await {
            Ok(Started { addr, serve, metrics }) => {
                let _ = ready.send(Ok((addr, metrics)));
                serve.await
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                Ok(())
            }
        }
    })
}

/// `USER_HZ`, the unit of `utime` and `stime`.
pub fn clock_ticks_per_second() -> anyhow::Result<u64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8(out.stdout)?;
    let hz: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))?;
    if hz == 0 {
        bail!("getconf CLK_TCK printed 0");
    }
    Ok(hz)
}

/// CPU time so far of a set of threads.
#[derive(Clone, Copy, Debug)]
pub struct CpuTime {
    /// `utime + stime` from `stat`.
    pub stat: Duration,
    /// Time on CPU from `schedstat`, when the kernel keeps it for every thread.
    pub sched: Option<Duration>,
    /// How many threads were summed.
    pub threads: usize,
}

impl CpuTime {
    /// The sum over this process's threads named `name`.
    fn of_threads_named(name: &str, ticks_per_second: u64) -> anyhow::Result<Self> {
        let mut total = Self {
            stat: Duration::ZERO,
            sched: Some(Duration::ZERO),
            threads: 0,
        };
        for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
            let dir = entry?.path();
            // A thread of another part of the process may end between the
            // listing and this read; it is not one of the server's.
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            if comm.trim_end_matches('\n') != name {
                continue;
            }
            let (stat, sched) = Self::of_thread(&dir, ticks_per_second)?;
            total.stat += stat;
            total.sched = total.sched.zip(sched).map(|(a, b)| a + b);
            total.threads += 1;
        }
        if total.threads == 0 {
            bail!("no thread named {name:?} in /proc/self/task");
        }
        Ok(total)
    }

    fn of_thread(dir: &Path, ticks_per_second: u64) -> anyhow::Result<(Duration, Option<Duration>)> {
        let path = dir.join("stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        // The command name (field 2) may hold spaces and parentheses: the
        // fields are counted from the last ')'. utime and stime are fields
        // 14 and 15, so the 12th and 13th after it.
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .with_context(|| format!("{}: no ')'", path.display()))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> anyhow::Result<u64> {
            let v = fields
                .get(i)
                .with_context(|| format!("{}: too few fields", path.display()))?;
            v.parse()
                .with_context(|| format!("{}: field {v:?}", path.display()))
        };
        let ticks = field(11)? + field(12)?;
        let stat = Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_second);
        let sched = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            .map(Duration::from_nanos);
        Ok((stat, sched))
    }
}

/// One closed-loop measurement of a server's CPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// Calls made.
    pub calls: u32,
    /// The server's `utime + stime` during them.
    pub cpu: Duration,
    /// The server's time on CPU during them, from `schedstat`.
    pub sched: Option<Duration>,
    /// Wall time of the calls.
    pub wall: Duration,
}

impl CpuSample {
    /// Server CPU per call, µs.
    pub fn cpu_us_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / f64::from(self.calls)
    }

    /// Server time on CPU per call from `schedstat`, µs.
    pub fn sched_us_per_call(&self) -> Option<f64> {
        self.sched.map(|s| s.as_secs_f64() * 1e6 / f64::from(self.calls))
    }

    /// Calls completed per second of wall time.
    pub fn calls_per_second(&self) -> f64 {
        f64::from(self.calls) / self.wall.as_secs_f64()
    }
}

/// `n` calls, each awaited before the next.
pub async fn closed_loop<F, Fut>(n: u32, mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for _ in 0..n {
        call().await?;
    }
    Ok(())
}

/// `calls` closed-loop calls and the CPU `server` spent meanwhile.
pub async fn measure_cpu<F, Fut>(
    server: &ServerThread,
    calls: u32,
    ticks_per_second: u64,
    call: F,
) -> anyhow::Result<CpuSample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let before = server.cpu(ticks_per_second)?;
    let start = Instant::now();
    closed_loop(calls, call).await?;
    let wall = start.elapsed();
    let after = server.cpu(ticks_per_second)?;
    Ok(CpuSample {
        calls,
        cpu: after.stat.saturating_sub(before.stat),
        sched: after.sched.zip(before.sched).map(|(a, b)| a.saturating_sub(b)),
        wall,
    })
}

/// Launches one call every `period` on its own task for `duration`; returns
/// each call's latency, from just before the call is polled to its end.
pub async fn open_loop<F, Fut>(period: Duration, duration: Duration, mut call: F) -> anyhow::Result<Latencies>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let count = duration.as_nanos() / period.as_nanos().max(1);
    let mut ticker = tokio::time::interval(period);
    // A late tick is caught up at once: the schedule, not the server's pace,
    // decides when calls start (no coordinated omission).
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..count {
        ticker.tick().await;
        let pending = call();
        tasks.spawn(async move {
            let sent = Instant::now();
            pending.await.map(|()| sent.elapsed())
        });
    }
    let launched_in = start.elapsed();
    let mut samples = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        samples.push(joined??);
    }
    samples.sort_unstable();
    Ok(Latencies { samples, launched_in })
}

/// Sorted latencies of one open-loop run.
#[derive(Debug)]
pub struct Latencies {
    /// Each call's latency, ascending.
    pub samples: Vec<Duration>,
    /// Time taken to launch them all.
    pub launched_in: Duration,
}

impl Latencies {
    /// Nearest-rank percentile, in µs.
    pub fn percentile_us(&self, p: f64) -> f64 {
        let n = self.samples.len();
        if n == 0 {
            return f64::NAN;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "n is a sample count far below 2^52; the rank is in 1..=n"
        )]
        let rank = ((p / 100.0) * n as f64).ceil().clamp(1.0, n as f64) as usize;
        self.samples[rank - 1].as_secs_f64() * 1e6
    }

    /// Calls launched per second.
    #[expect(clippy::cast_precision_loss, reason = "a sample count far below 2^52")]
    pub fn achieved_rate(&self) -> f64 {
        self.samples.len() as f64 / self.launched_in.as_secs_f64()
    }
}

/// The median of `values` (the upper one of an even count); NaN when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A fresh identity for `path`, valid for an hour: one run.
pub fn identity(authority: &Authority, path: &str) -> anyhow::Result<Arc<SvidStore>> {
    let id = SpiffeId::from_parts(authority.trust_domain(), path)?;
    let issued = authority.issue(&id, Duration::from_secs(3600), IssueOptions::default())?;
    let svid = Svid::from_der(&issued.chain_der_concatenated(), &issued.key_pkcs8_der)?;
    let mut bundles = BundleSet::new();
    bundles.insert(Bundle::from_der_concat(
        authority.trust_domain().clone(),
        &authority.bundle_der(),
    )?);
    Ok(SvidStore::new(id, svid, bundles)?)
}

/// Progress goes to standard error; the report to standard output.
#[expect(clippy::print_stderr, reason = "the benchmark's progress lines")]
pub fn progress(line: &str) {
    eprintln!("{line}");
}
