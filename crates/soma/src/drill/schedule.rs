//! Scheduled drills: `soma drill schedule` keeps a schedule in the data dir
//! (`DIR/drills/schedule.json`), and `soma drill scheduler` runs the drills
//! that are due, one at a time, each as `soma drill run --data-dir DIR
//! ARGS…` — recorded in Analytics like any drill — and writes its outcome
//! back into the schedule.
//!
//! The schedule is read and written under an exclusive lock on
//! `DIR/drills/schedule.lock`, so `schedule` and any number of schedulers
//! can share it: a scheduler claims a due drill by moving its next run one
//! period ahead *before* running it (a second scheduler then finds it not
//! due, and a scheduler that dies mid-drill does not rerun it in a loop).
//! A drill that was due several periods ago runs once, not once per missed
//! period. The drill's arguments are checked when it is scheduled, exactly
//! as `soma drill run` would parse them (and its `--plan` read), so a
//! schedule never holds a drill that cannot start. A drill whose plan is an
//! installed capsule (`--capsule NAME --environment ENV`) keeps only the
//! capsule's name: each run resolves the revision installed at that moment,
//! so a newly approved revision or a rollback takes effect at the next run.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, Parser as _};
use serde::{Deserialize, Serialize};

use crate::cli::say;

/// The schedule format this `soma` writes and reads.
const VERSION: u64 = 1;
/// The shortest period: a drill takes tens of seconds and kills a primary.
const MIN_EVERY: Duration = Duration::from_secs(60);

/// `soma drill schedule`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// The data dir of the running `soma up` (the schedule is
    /// DIR/drills/schedule.json).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Run the drill this often (at least 1m); its first run is due at once.
    #[arg(long, value_parser = parse_every, required_unless_present_any = ["list", "remove"])]
    pub every: Option<Duration>,
    /// The scheduled drill's name (default: drill-N).
    #[arg(long)]
    pub id: Option<String>,
    /// List the scheduled drills, their last run and their next.
    #[arg(long, conflicts_with_all = ["every", "id", "remove"])]
    pub list: bool,
    /// Remove the scheduled drill ID.
    #[arg(long, value_name = "ID", conflicts_with_all = ["every", "id"])]
    pub remove: Option<String>,
    /// The `soma drill run` arguments, after the schedule's own (a `--`
    /// before them is allowed): all but --data-dir, which is the schedule's.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "DRILL ARGS"
    )]
    pub drill_args: Vec<String>,
}

/// `soma drill scheduler`'s arguments.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    /// The data dir of the running `soma up` and of the schedule.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Run the drills that are due now, then exit: 0 when each passed (or
    /// none was due), 1 otherwise.
    #[arg(long)]
    pub once: bool,
    /// How often the schedule is read for due drills.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub poll: Duration,
}

/// `DIR/drills/schedule.json`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Schedule {
    version: u64,
    drills: Vec<Entry>,
}

/// One scheduled drill. Times are RFC 3339 (UTC).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    /// The period, as written by `humantime` (`1day`, `6h`).
    every: String,
    /// `soma drill run`'s arguments, `--data-dir` aside.
    args: Vec<String>,
    created_at: String,
    next_run_at: String,
    last_run: Option<LastRun>,
}

/// What the last run of a drill did.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LastRun {
    started_at: String,
    finished_at: String,
    /// `soma drill run`'s exit code; `None` when it was killed by a signal
    /// or could not start.
    exit_code: Option<i32>,
    /// Its last line (`rto_seconds=… rpo_events=…`), or why it did not run.
    result: String,
}

fn parse_every(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < MIN_EVERY {
        return Err("must be at least 1m".to_owned());
    }
    Ok(d)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_time(entry: &Entry, field: &str, text: &str) -> anyhow::Result<SystemTime> {
    humantime::parse_rfc3339(text).with_context(|| format!("scheduled drill {}: {field} {text:?}", entry.id))
}

/// `soma drill schedule`: add, list or remove a scheduled drill.
pub async fn schedule(args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        let schedule = with_schedule(&args.data_dir, |_| Ok(())).await?;
        if schedule.drills.is_empty() {
            say(format_args!("no scheduled drills"));
        }
        for entry in &schedule.drills {
            let last = entry.last_run.as_ref().map_or_else(
                || "never run".to_owned(),
                |r| {
                    format!(
                        "last {} exit {} ({})",
                        r.started_at,
                        r.exit_code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
                        r.result
                    )
                },
            );
            say(format_args!(
                "{} every {} next {} {last} args: {}",
                entry.id,
                entry.every,
                entry.next_run_at,
                entry.args.join(" ")
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = &args.remove {
        let mut found = false;
        with_schedule(&args.data_dir, |s| {
            let before = s.drills.len();
            s.drills.retain(|e| &e.id != id);
            found = s.drills.len() != before;
            Ok(())
        })
        .await?;
        if !found {
            return Ok(crate::cli::refused(format_args!("no scheduled drill {id:?}")));
        }
        say(format_args!("removed {id}"));
        return Ok(ExitCode::SUCCESS);
    }
    // clap requires --every here.
    let Some(every) = args.every else {
        return Ok(crate::config_error("--every is required"));
    };
    let drill_args = match checked_drill_args(&args.data_dir, &args.drill_args) {
        Ok(a) => a,
        Err(reason) => return Ok(crate::config_error(reason)),
    };
    if let Some(id) = &args.id
        && (id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    {
        return Ok(crate::config_error(format_args!(
            "--id {id:?}: 1 to 64 letters, digits, '_', '-' or '.'"
        )));
    }
    let now = SystemTime::now();
    let mut taken = None;
    let mut added = String::new();
    with_schedule(&args.data_dir, |s| {
        let id = match &args.id {
            Some(id) => id.clone(),
            None => (1..)
                .map(|n| format!("drill-{n}"))
                .find(|id| s.drills.iter().all(|e| &e.id != id))
                .unwrap_or_default(),
        };
        if s.drills.iter().any(|e| e.id == id) {
            taken = Some(id);
            return Ok(());
        }
        s.drills.push(Entry {
            id: id.clone(),
            every: humantime::format_duration(every).to_string(),
            args: drill_args.clone(),
            created_at: rfc3339(now),
            next_run_at: rfc3339(now),
            last_run: None,
        });
        added = id;
        Ok(())
    })
    .await?;
    if let Some(id) = taken {
        return Ok(crate::config_error(format_args!(
            "--id {id:?}: a scheduled drill has that name (remove it first)"
        )));
    }
    say(format_args!(
        "scheduled {added}: every {}, first run due now, args: {}",
        humantime::format_duration(every),
        drill_args.join(" ")
    ));
    Ok(ExitCode::SUCCESS)
}

/// The drill's arguments as `soma drill run` parses them with the
/// schedule's data dir, its plan read; the paths of `--plan` and
/// `--ha-dir` made absolute (the scheduler may run elsewhere). `Err`: why
/// they are refused.
fn checked_drill_args(data_dir: &Path, given: &[String]) -> Result<Vec<String>, String> {
    let mut args = Vec::with_capacity(given.len());
    let mut path_next = false;
    for arg in given {
        if arg == "--data-dir" || arg.starts_with("--data-dir=") {
            return Err(
                "the drill's --data-dir is the schedule's: leave it out of the drill's arguments".to_owned(),
            );
        }
        let absolute = |p: &str| {
            std::path::absolute(p)
                .map(|p| p.display().to_string())
                .map_err(|e| format!("{p}: {e}"))
        };
        if path_next {
            args.push(absolute(arg)?);
            path_next = false;
        } else if let Some((flag @ ("--plan" | "--ha-dir"), value)) = arg.split_once('=') {
            args.push(format!("{flag}={}", absolute(value)?));
        } else {
            path_next = arg == "--plan" || arg == "--ha-dir";
            args.push(arg.clone());
        }
    }
    let mut argv = vec![
        "soma".to_owned(),
        "drill".to_owned(),
        "run".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    argv.extend(args.iter().cloned());
    let cli = crate::Cli::try_parse_from(&argv).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        format!(
            "the drill's arguments: {}",
            first.strip_prefix("error: ").unwrap_or(first)
        )
    })?;
    if let crate::Command::Drill {
        command: crate::DrillCommand::Run(mut run),
    } = cli.command
    {
        // (These arguments parsed just above: the matches are there.)
        let given = crate::Cli::command()
            .try_get_matches_from(&argv)
            .map(|m| crate::given_arguments(&m, &["drill", "run"]))
            .unwrap_or_default();
        super::plan_sources(&run.plan, run.capsule.as_deref(), &given)?;
        super::plan::apply(&mut run)?;
    }
    Ok(args)
}

/// `soma drill scheduler`: runs the due drills, then (unless `--once`)
/// reads the schedule again every `--poll` until stopped.
pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let data_dir = std::path::absolute(&args.data_dir)?;
    let mut all_passed = true;
    let mut stop = std::pin::pin!(crate::stop_signal());
    loop {
        // One drill at a time: each kills a primary.
        while let Some(entry) = claim_due(&data_dir).await? {
            let passed = run_one(&data_dir, &entry).await?;
            all_passed &= passed;
        }
        if args.once {
            break;
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(args.poll) => {}
        }
    }
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The first due drill, claimed: its next run moved one period past now.
async fn claim_due(data_dir: &Path) -> anyhow::Result<Option<Entry>> {
    let now = SystemTime::now();
    let mut claimed = None;
    with_schedule(data_dir, |s| {
        for entry in &mut s.drills {
            if parse_time(entry, "next_run_at", &entry.next_run_at)? > now {
                continue;
            }
            let every = humantime::parse_duration(&entry.every)
                .with_context(|| format!("scheduled drill {}: every {:?}", entry.id, entry.every))?;
            entry.next_run_at = rfc3339(now + every);
            claimed = Some(entry.clone());
            break;
        }
        Ok(())
    })
    .await?;
    Ok(claimed)
}

/// Runs one claimed drill and records its outcome; `Ok(passed)`.
async fn run_one(data_dir: &Path, entry: &Entry) -> anyhow::Result<bool> {
    let started = SystemTime::now();
    say(format_args!(
        "scheduler: running {} (soma drill run {})",
        entry.id,
        entry.args.join(" ")
    ));
    let exe = std::env::current_exe().context("locating the soma binary")?;
    // The drill's progress lines go where the scheduler's go; its last
    // line (the figures) is kept.
    let output = tokio::process::Command::new(exe)
        .args(["drill", "run", "--data-dir"])
        .arg(data_dir)
        .args(&entry.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    // (`output()` would capture standard error too.)
    let output = match output {
        Ok(child) => child.wait_with_output().await,
        Err(e) => Err(e),
    };
    let (exit_code, result) = match output {
        Ok(out) => (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("no output")
                .trim()
                .to_owned(),
        ),
        Err(e) => (None, format!("could not start: {e}")),
    };
    let run = LastRun {
        started_at: rfc3339(started),
        finished_at: rfc3339(SystemTime::now()),
        exit_code,
        result: result.clone(),
    };
    let mut next = String::new();
    with_schedule(data_dir, |s| {
        // Removed meanwhile: nothing to record it in.
        if let Some(e) = s.drills.iter_mut().find(|e| e.id == entry.id) {
            e.last_run = Some(run.clone());
            next.clone_from(&e.next_run_at);
        }
        Ok(())
    })
    .await?;
    say(format_args!(
        "scheduler: {} exited {}: {result}; next run at {next}",
        entry.id,
        exit_code.map_or_else(|| "without a code".to_owned(), |c| c.to_string())
    ));
    Ok(exit_code == Some(0))
}

/// Reads the schedule under its lock, lets `change` edit it, and writes it
/// back (atomically) before the lock is released; answers the schedule as
/// written. A missing schedule is an empty one.
async fn with_schedule(
    data_dir: &Path,
    change: impl FnOnce(&mut Schedule) -> anyhow::Result<()>,
) -> anyhow::Result<Schedule> {
    // File locks and small reads and writes: blocking, off the runtime's
    // other tasks (the command's runtime is multi-threaded).
    tokio::task::block_in_place(|| locked(data_dir, change))
}

fn locked(
    data_dir: &Path,
    change: impl FnOnce(&mut Schedule) -> anyhow::Result<()>,
) -> anyhow::Result<Schedule> {
    let dir = data_dir.join("drills");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(dir.join("schedule.lock"))
        .with_context(|| format!("opening {}", dir.join("schedule.lock").display()))?;
    // flock(2): released when the file is closed, also when the process dies.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).context("locking the schedule")?;
    let path = dir.join("schedule.json");
    let mut schedule = match std::fs::read(&path) {
        Ok(bytes) => {
            let schedule: Schedule =
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
            if schedule.version != VERSION {
                bail!(
                    "{}: version {} is not supported: this soma reads version {VERSION}",
                    path.display(),
                    schedule.version
                );
            }
            schedule
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Schedule {
            version: VERSION,
            drills: Vec::new(),
        },
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    change(&mut schedule)?;
    let mut text = serde_json::to_vec_pretty(&schedule)?;
    text.push(b'\n');
    crate::up::write_atomically(&path, &text)?;
    // The lock is released when `lock` is closed, after the rename.
    drop(lock);
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_at_least_a_minute() {
        assert_eq!(parse_every("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_every("30s").is_err());
        assert!(parse_every("often").is_err());
    }
}
