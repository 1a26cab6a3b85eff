//! CPU time of every thread of this process, by thread id, from
//! `/proc/self/task`: for the parts of a server that do not run on its
//! `ServerThread` (SQLite connection threads, a writer thread, an engine's
//! ticker), which a benchmark must attribute itself.
//!
//! Included with `#[path]` by `registry_bench.rs`. A snapshot holds each
//! thread's name (`comm`, at most 15 bytes), `utime + stime` from `stat`
//! and, where the kernel keeps it, its time on CPU from `schedstat`; two
//! snapshots give what each thread present in both spent in between. A
//! thread that ended between them took its CPU time with it: it is counted
//! as gone, so that a report can say so.
//!
//! Also the resident set size (`VmRSS`) of this process or of another one
//! (a child serving a peer), from `/proc/<pid>/status`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

/// One thread's CPU time so far.
#[derive(Clone, Debug)]
pub struct ThreadCpu {
    /// Its name as `/proc` keeps it (`comm`, at most 15 bytes).
    pub name: String,
    /// `utime + stime` from `stat`.
    pub stat: Duration,
    /// Time on CPU from `schedstat`, when the kernel keeps it.
    pub sched: Option<Duration>,
}

/// Every thread of this process at one instant, by thread id.
#[derive(Clone, Debug, Default)]
pub struct Threads(pub BTreeMap<u32, ThreadCpu>);

/// What threads spent between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Spent {
    /// Each thread present in both snapshots, with what it spent.
    pub threads: BTreeMap<u32, ThreadCpu>,
    /// Threads of the earlier snapshot missing from the later one.
    pub gone: usize,
}

impl Threads {
    /// The threads of this process now. A thread that ends while it is read
    /// is left out.
    pub fn now(ticks_per_second: u64) -> anyhow::Result<Self> {
        let mut threads = BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
            let dir = entry?.path();
            let Some(tid) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            let Some((stat, sched)) = read_cpu(&dir, ticks_per_second)? else {
                continue;
            };
            threads.insert(
                tid,
                ThreadCpu {
                    name: comm.trim_end_matches('\n').to_owned(),
                    stat,
                    sched,
                },
            );
        }
        Ok(Self(threads))
    }

    /// What each thread spent from `self` to `later`.
    pub fn until(&self, later: &Self) -> Spent {
        let mut spent = Spent::default();
        for (tid, before) in &self.0 {
            let Some(after) = later.0.get(tid) else {
                spent.gone += 1;
                continue;
            };
            spent.threads.insert(
                *tid,
                ThreadCpu {
                    name: after.name.clone(),
                    stat: after.stat.saturating_sub(before.stat),
                    sched: after.sched.zip(before.sched).map(|(a, b)| a.saturating_sub(b)),
                },
            );
        }
        // A thread started in between spent all it has.
        for (tid, after) in &later.0 {
            if !self.0.contains_key(tid) {
                spent.threads.insert(*tid, after.clone());
            }
        }
        spent
    }
}

impl Spent {
    /// The sum over the threads `keep` selects: `utime + stime`, and the
    /// `schedstat` time when every selected thread has one.
    pub fn sum(&self, mut keep: impl FnMut(u32, &ThreadCpu) -> bool) -> (Duration, Option<Duration>) {
        let mut stat = Duration::ZERO;
        let mut sched = Some(Duration::ZERO);
        for (tid, t) in &self.threads {
            if keep(*tid, t) {
                stat += t.stat;
                sched = sched.zip(t.sched).map(|(a, b)| a + b);
            }
        }
        (stat, sched)
    }
}

/// `utime + stime` and `schedstat` of the thread whose `/proc` directory
/// is `dir`; `None` when it ended before it was read.
fn read_cpu(dir: &Path, ticks_per_second: u64) -> anyhow::Result<Option<(Duration, Option<Duration>)>> {
    let path = dir.join("stat");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    // The command name (field 2) may hold spaces and parentheses: the
    // fields are counted from the last ')'. utime and stime are fields 14
    // and 15, so the 12th and 13th after it.
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
    Ok(Some((stat, sched)))
}

/// This process's resident set size (`VmRSS`), in KiB.
pub fn rss_kib() -> anyhow::Result<u64> {
    vm_rss_kib(Path::new("/proc/self/status"))
}

/// The resident set size (`VmRSS`) of the process `pid`, in KiB: another
/// process of this user, such as a child.
pub fn process_rss_kib(pid: u32) -> anyhow::Result<u64> {
    vm_rss_kib(&Path::new("/proc").join(pid.to_string()).join("status"))
}

/// `VmRSS` from the `/proc/<pid>/status` file at `path`, in KiB.
fn vm_rss_kib(path: &Path) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .with_context(|| format!("{} has no VmRSS line", path.display()))?;
    let kib = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("VmRSS {line:?}"))?;
    Ok(kib)
}
