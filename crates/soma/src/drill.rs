//! `soma drill run`: a failover drill against a running stack, measured
//! from outside as a tenant sees it.
//!
//! A steady write load goes through the JSON edge (capsule run events, each
//! sent again with its own event id until it is acknowledged: Analytics
//! keeps one record per id); once the load runs, the target is killed with
//! SIGKILL — for `postgres`, the PostgreSQL primary's postmaster, found
//! through Patroni's REST API in the HA stack's `cluster.json`
//! (`scripts/ops/ha-up.sh`); for `analytics`, the active Analytics of a
//! `soma up --analytics-standby` (the one instance whose admin `/readyz`
//! answers 200: the lease's holder; its pid from `DIR/pids.json`); for
//! `both`, the two at once. The drill then waits for the failover (Patroni
//! names a new leader; the other Analytics reports ready) and for writes
//! sent after the kill to be acknowledged again, and measures:
//!
//! - **RTO**: from the kill to the first acknowledgement of a write sent
//!   after the outage became visible (the first refused write after the
//!   kill; after the kill itself when none was refused): the killed
//!   primary's backends can still commit a write or two, synchronously
//!   replicated, in the milliseconds after its postmaster died, and those
//!   acknowledgements say nothing of the recovery;
//! - **RPO**: the number of acknowledged events missing from Analytics'
//!   signed export of the tenant's capsule runs afterwards.
//!
//! After recovery it checks the ledger and the services ([`checks`]): the
//! checkpoint fetched before the kill must verify against the ledger after
//! it (`soma verify ledger`), every acknowledged event must have its own
//! leaf in it, and the services the plan names must be ready.
//!
//! It prints a progress line per step on standard error, records the drill
//! in Analytics (`POST /v1/drills/disaster`) with what it measured, each
//! step's outcome *and its own targets* (`rtoTarget`; `rpoTarget` `0s` when
//! `--rpo-target` is 0 — an RPO target of N > 0 events has no span
//! equivalent and is judged through the `rpo` step's outcome), and prints
//! `rto_seconds=<float> rpo_events=<int>` (RTO to the nanosecond) as its
//! last line on standard output.
//!
//! **Verdict.** Analytics judges the drill against the region's objective
//! tightened by the drill's targets (the stricter of each), and fails it
//! when a step failed; the drill's exit status is that verdict: 0 only when
//! Analytics recorded it as passed (then every target held and every check
//! passed), 1 otherwise — a target missed, a check failed, the stack not
//! recovered within `--timeout`, or a configured objective stricter than the
//! drill's own target exceeded — and a failed drill is what Analytics sends
//! its signed webhook notification for. 64 for unusable arguments (a bad
//! `--plan` included: see [`plan`]; `--plan` and `--capsule` together).
//!
//! **The plan.** From a file (`--plan`), or from the installed capsule
//! `dr_failover_drill` (`--capsule NAME --environment ENV`: its reviewed and
//! installed `parameters`, resolved through the edge at each drill before
//! anything is touched, see [`capsule`]). A capsule that cannot give a plan
//! refuses the drill with its own exit code: 3 not installed, 4 a release it
//! pins revoked, 5 the run refused otherwise, 6 its plan fails the checks
//! (the field named). `--dry-run` resolves the plan and prints it on one
//! line (`plan="dr_failover_drill v1" source="capsule dr_failover_drill
//! (production, run …)" rto_target=15s rpo_target=0 …`), then exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::cli::request;

pub mod capsule;
mod checks;
pub mod plan;
pub mod schedule;

/// What a drill kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The PostgreSQL primary of the HA stack (its postmaster).
    Postgres,
    /// The active Analytics.
    Analytics,
    /// Both at once.
    Both,
}

/// `soma drill run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// The data dir of the running `soma up`.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// The HA stack's directory (`scripts/ops/ha-up.sh DIR`).
    #[arg(long, default_value = "./.soma-ha")]
    pub ha_dir: PathBuf,
    /// What to kill.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Longest acceptable RTO.
    #[arg(long, default_value = "15s", value_parser = crate::parse_target)]
    pub rto_target: Duration,
    /// Most acknowledged events that may be lost.
    #[arg(long, default_value_t = 0)]
    pub rpo_target: u64,
    /// Region the drill is recorded for (the gateway's).
    #[arg(long, default_value = "local")]
    pub region: String,
    /// Concurrent writers of the load.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Acknowledged writes before the kill.
    #[arg(long, default_value_t = 40)]
    pub before: usize,
    /// Writes sent after the kill that must be acknowledged.
    #[arg(long, default_value_t = 40)]
    pub after: usize,
    /// Longest the drill waits for the load and the recovery.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// A drill plan (e.g. scripts/ops/dr_failover_drill.plan.json): targets,
    /// load, timeout, steps and services to check; flags given on the
    /// command line override it.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Take the plan from the installed capsule NAME instead (e.g.
    /// dr_failover_drill): run through the edge as the drill's tenant, its
    /// output checked as a plan file is; exclusive with --plan.
    #[arg(long, value_name = "NAME")]
    pub capsule: Option<String>,
    /// The environment of the installed capsule (with --capsule).
    #[arg(long, default_value = "production")]
    pub environment: String,
    /// Resolve the plan (from --plan or --capsule) and print what the drill
    /// would do on one line, then exit 0: no load, nothing killed.
    #[arg(long)]
    pub dry_run: bool,
    /// The ids of the arguments given on the command line (the others may
    /// come from the plan).
    #[arg(skip)]
    pub given: BTreeSet<String>,
    /// The checks after recovery (from the plan; all of them without one).
    #[arg(skip)]
    pub checks: plan::Checks,
}

/// The tenant the drill writes as.
const TENANT: &str = "drill";

/// Each acknowledged event: when the acknowledged attempt was sent, and
/// when its answer came; when each refused attempt was answered.
#[derive(Default)]
struct Load {
    acks: BTreeMap<String, (Instant, Instant)>,
    refused_at: Vec<Instant>,
    refusals: BTreeMap<u16, u64>,
}

impl Load {
    /// When the outage the kill caused became visible: the first refusal
    /// answered after `killed_at`. (Writes still running on the killed
    /// primary's backends can commit, synchronously replicated, for a few
    /// milliseconds after its postmaster died: their acknowledgements say
    /// nothing of the recovery.)
    fn outage_seen(&self, killed_at: Instant) -> Option<Instant> {
        self.refused_at.iter().copied().filter(|t| *t > killed_at).min()
    }

    /// Acknowledged writes sent after `t`.
    fn sent_after(&self, t: Instant) -> usize {
        self.acks.values().filter(|(sent, _)| *sent > t).count()
    }

    /// RTO: from the kill to the first acknowledgement of a write sent
    /// after the outage became visible (after the kill when no write was
    /// ever refused).
    fn rto(&self, killed_at: Instant) -> Option<Duration> {
        let from = self.outage_seen(killed_at).unwrap_or(killed_at);
        self.acks
            .values()
            .filter(|(sent, _)| *sent > from)
            .map(|(_, acked)| acked.duration_since(killed_at))
            .min()
    }
}

#[expect(clippy::print_stderr, reason = "the drill's progress lines")]
fn progress(line: std::fmt::Arguments<'_>) {
    eprintln!("drill: {line}");
}

pub async fn run(mut args: DrillArgs) -> anyhow::Result<ExitCode> {
    if let Err(reason) = plan_sources(&args.plan, args.capsule.as_deref(), &args.given) {
        return Ok(crate::config_error(reason));
    }
    if let Err(reason) = plan::apply(&mut args) {
        return Ok(crate::config_error(reason));
    }
    // The plan's source, for the progress line and the record.
    let mut source = args.plan.as_ref().map(|p| p.display().to_string());
    // The installed capsule's plan, resolved before anything is looked up
    // or killed: a refusal leaves the stack alone.
    if let Some(name) = args.capsule.clone() {
        let environment = args.environment.clone();
        match capsule::resolve(&args.data_dir, &args.region, TENANT, &name, &environment).await {
            Ok(resolved) => {
                let from = format!("--capsule {name} (environment {environment})");
                if let Err(reason) =
                    plan::apply_value(&mut args, plan::integral_numbers(resolved.plan), &from)
                {
                    return Ok(capsule::Refusal {
                        code: capsule::EXIT_PLAN_INVALID,
                        reason: format!("{reason}: the installed plan is refused, nothing was run"),
                    }
                    .exit());
                }
                source = Some(format!("capsule {name} ({environment}, run {})", resolved.run_id));
            }
            Err(Ok(refusal)) => return Ok(refusal.exit()),
            Err(Err(e)) => return Err(e),
        }
    }
    let args = args;
    if let (Some(plan), Some(source)) = (&args.checks.plan, &source) {
        progress(format_args!(
            "plan {plan} from {source}: rto target {}, rpo target {} events, {} writers, {} before, {} after, timeout {}",
            humantime::format_duration(args.rto_target),
            args.rpo_target,
            args.writers,
            args.before,
            args.after,
            humantime::format_duration(args.timeout),
        ));
    }

    if args.writers == 0 || args.before == 0 || args.after == 0 {
        return Ok(crate::config_error(
            "--writers, --before and --after must be at least 1",
        ));
    }
    if args.dry_run {
        let services: Vec<&str> = args.checks.services.iter().map(|s| s.name()).collect();
        crate::cli::say(format_args!(
            "plan={:?} source={:?} rto_target={} rpo_target={} writers={} before={} after={} timeout={} ledger={} services={}",
            args.checks.plan.as_deref().unwrap_or("none"),
            source.as_deref().unwrap_or("flags"),
            humantime::format_duration(args.rto_target),
            args.rpo_target,
            args.writers,
            args.before,
            args.after,
            humantime::format_duration(args.timeout),
            args.checks.ledger,
            if services.is_empty() {
                "-".to_owned()
            } else {
                services.join(",")
            },
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let endpoints = endpoints(&args.data_dir)?;
    let edge = endpoints["edge"]
        .as_str()
        .ok_or_else(|| anyhow!("endpoints.json has no edge"))?
        .to_owned();
    let authority = crate::cli::edge_authority(&edge)?;
    let analytics = match args.target {
        Target::Postgres => None,
        Target::Analytics | Target::Both => match AnalyticsInstances::of(&args.data_dir, &endpoints)? {
            Some(instances) => Some(instances),
            None => {
                return Ok(crate::config_error(
                    "--target analytics and both need an Analytics standby: start the stack with `soma up --database-url URL --analytics-standby`",
                ));
            }
        },
    };
    let cluster: Option<Value> = match args.target {
        Target::Analytics => None,
        Target::Postgres | Target::Both => Some(serde_json::from_slice(
            &std::fs::read(args.ha_dir.join("cluster.json")).with_context(|| {
                format!(
                    "reading {}/cluster.json (scripts/ops/ha-up.sh writes it)",
                    args.ha_dir.display()
                )
            })?,
        )?),
    };
    let token = |scope: &str| {
        crate::token::mint(&crate::token::TokenArgs {
            data_dir: args.data_dir.clone(),
            tenant: TENANT.to_owned(),
            region: args.region.clone(),
            subject: Some("drill@drill".to_owned()),
            scope: scope.to_owned(),
            mfa: false,
            ttl: Duration::from_secs(3600),
            operator: false,
        })
    };
    let writer_token = token("analytics:ingest analytics:export drills:write ledger:read")?;
    let run_id = format!("{:016x}", rand::random::<u64>());
    let drill_started = SystemTime::now();
    let mut steps: Vec<(String, bool, String)> = Vec::new();

    // 1. The load.
    progress(format_args!(
        "load: {} writers through {edge}, events drill-{run_id}-*",
        args.writers
    ));
    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (load, stop, authority, token, run_id) = (
            Arc::clone(&load),
            Arc::clone(&stop),
            authority.clone(),
            writer_token.clone(),
            run_id.clone(),
        );
        writers.push(tokio::spawn(async move {
            // One start time for every event of this writer: an event sent
            // again (its first answer lost) carries exactly the same content,
            // which Analytics answers with the stored record.
            let started = rfc3339(SystemTime::now());
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("drill-{run_id}-{w}-{i}");
                let body = json!({
                    "eventId": id, "capsuleId": "dr_failover_drill", "runId": id,
                    "outcome": "RUN_OUTCOME_SUCCEEDED",
                    "startedAt": started,
                    "duration": "0s",
                })
                .to_string();
                let sent = Instant::now();
                let status = request(
                    http::Method::POST,
                    &authority,
                    "/v1/capsule-runs",
                    Some(&token),
                    Some(body.as_bytes()),
                )
                .await
                .map_or(0, |(status, _)| status.as_u16());
                let acknowledged = status == 200;
                {
                    let mut load = load.lock().unwrap_or_else(PoisonError::into_inner);
                    if acknowledged {
                        load.acks.insert(id, (sent, Instant::now()));
                    } else {
                        load.refused_at.push(Instant::now());
                        *load.refusals.entry(status).or_default() += 1;
                    }
                }
                if acknowledged {
                    i += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let acknowledged = || load.lock().unwrap_or_else(PoisonError::into_inner).acks.len();
    let deadline = Instant::now() + args.timeout;
    while acknowledged() < args.before {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!("the load never reached {} acknowledged writes", args.before);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    steps.push((
        "load".into(),
        true,
        format!(
            "{} writes acknowledged before the kill{}",
            args.before,
            match (&args.checks.plan, &source) {
                (Some(p), Some(source)) => format!(" (plan {p} from {source})"),
                (Some(p), None) => format!(" (plan {p})"),
                _ => String::new(),
            }
        ),
    ));
    // The last checkpoint before the kill, kept for the ledger check.
    let before = if args.checks.ledger {
        let acked = load
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acks
            .keys()
            .cloned()
            .collect();
        let dir = args.data_dir.join("drills").join(format!("drill-{run_id}"));
        let before = checks::checkpoint_before(&authority, &writer_token, &dir, acked).await;
        match &before {
            Ok(b) => progress(format_args!(
                "checkpoint before the kill: tree size {}, kept in {}",
                b.tree_size,
                b.note.display()
            )),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                bail!("fetching the checkpoint before the kill: {e:#}");
            }
        }
        before.ok()
    } else {
        None
    };

    // 2. The kill: every victim found first, then killed one right after
    // the other.
    let primary = match &cluster {
        Some(cluster) => {
            let (leader, data_dir) = current_leader(cluster).await?;
            let pid_file = PathBuf::from(&data_dir).join("postmaster.pid");
            let pid = std::fs::read_to_string(&pid_file)
                .with_context(|| format!("reading {}", pid_file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            Some((leader, pid))
        }
        None => None,
    };
    let active = match &analytics {
        Some(instances) => match instances.active(Duration::from_secs(10)).await {
            Ok(active) => Some(active),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        },
        None => None,
    };
    let killed_wall = SystemTime::now();
    let killed_at = Instant::now();
    let mut victims = Vec::new();
    if let Some((leader, pid)) = &primary {
        victims.push((
            pid.clone(),
            format!("the PostgreSQL primary {leader} (postmaster pid {pid})"),
        ));
    }
    if let Some((instance, pid)) = &active {
        victims.push((
            pid.to_string(),
            format!("the active Analytics {instance} (pid {pid})"),
        ));
    }
    for (pid, what) in &victims {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .context("running kill")?;
        if !killed.success() {
            stop.store(true, Ordering::Relaxed);
            bail!("kill -KILL {pid} ({what}) failed");
        }
    }
    let killed_what = victims
        .iter()
        .map(|(_, what)| what.as_str())
        .collect::<Vec<_>>()
        .join(" and ");
    progress(format_args!("killed {killed_what} with SIGKILL"));
    steps.push(("kill".into(), true, format!("{killed_what}, SIGKILL")));

    // 3. Recovery: the failover (Patroni names a new leader; another
    // Analytics holds the lease), and writes sent after both that and the
    // outage becoming visible are acknowledged.
    let mut failover_at = None;
    let mut failover_seen = None;
    let mut promoted = primary.is_none();
    let mut taken_over = active.is_none();
    let mut recovered = false;
    while Instant::now() < deadline {
        if !promoted
            && let (Some(cluster), Some((leader, _))) = (&cluster, &primary)
            && let Ok((now_leader, _)) = current_leader(cluster).await
            && now_leader != *leader
        {
            promoted = true;
            progress(format_args!("Patroni promoted {now_leader}"));
        }
        if !taken_over
            && let (Some(instances), Some((killed, pid))) = (&analytics, &active)
            && let Some(now_active) = instances.ready_other_than(killed, *pid).await
        {
            taken_over = true;
            progress(format_args!(
                "Analytics {now_active} holds the ledger writer's lease"
            ));
        }
        if failover_at.is_none() && promoted && taken_over {
            failover_at = Some(SystemTime::now());
            failover_seen = Some(Instant::now());
        }
        if let Some(seen) = failover_seen {
            let load = load.lock().unwrap_or_else(PoisonError::into_inner);
            let from = load
                .outage_seen(killed_at)
                .map_or(seen, |outage| outage.max(seen));
            if load.sent_after(from) >= args.after {
                recovered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.await;
    }
    let load = Arc::try_unwrap(load)
        .map_err(|_| anyhow!("a writer is still running"))?
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let rto = load.rto(killed_at);
    match rto {
        Some(rto) => progress(format_args!(
            "recovered: the first write sent after the outage acknowledged {:.3}s after the kill; refusals meanwhile by status {:?}",
            rto.as_secs_f64(),
            load.refusals
        )),
        None => progress(format_args!(
            "not recovered within {}",
            humantime::format_duration(args.timeout)
        )),
    }
    steps.push((
        "recovery".into(),
        recovered,
        match rto {
            Some(rto) => format!("rto {:.3}s", rto.as_secs_f64()),
            None => "no write acknowledged after the kill".to_owned(),
        },
    ));

    // 4. RPO: every acknowledged event in the signed export.
    let export_token = writer_token;
    let stored = exported_event_ids(&authority, &export_token, drill_started, &run_id).await?;
    let lost: BTreeSet<&String> = load.acks.keys().filter(|id| !stored.contains(*id)).collect();
    let rpo_events = u64::try_from(lost.len()).unwrap_or(u64::MAX);
    progress(format_args!(
        "rpo: {} of {} acknowledged events missing from the export",
        lost.len(),
        load.acks.len()
    ));
    steps.push((
        "rpo".into(),
        rpo_events <= args.rpo_target,
        format!("{rpo_events} of {} acknowledged events lost", load.acks.len()),
    ));
    let (checked, skipped) = after_recovery(
        &args,
        &authority,
        &export_token,
        &endpoints,
        before.as_ref(),
        &load,
    )
    .await;
    steps.extend(checked);

    // 5. The drill, recorded in Analytics.
    let restored_at = rto.map(|rto| killed_wall + rto);
    // Failover is complete when service is restored at the latest (the
    // leader is observed by polling, which may come after the first
    // acknowledgement).
    let failover_at = match (failover_at, restored_at) {
        (Some(f), Some(r)) => Some(f.min(r)),
        (f, r) => f.or(r),
    };
    // No acknowledged event lost: every write acknowledged before the
    // failure was durable up to it. Otherwise, the first lost one's
    // acknowledgement is where durability ended.
    let last_durable = match lost
        .iter()
        .filter_map(|id| load.acks.get(*id))
        .map(|(_, a)| *a)
        .min()
    {
        None => killed_wall,
        Some(first_lost) => killed_wall - killed_at.saturating_duration_since(first_lost),
    };
    let rto_ok = rto.is_some_and(|rto| rto <= args.rto_target);
    let scenario = match args.target {
        Target::Postgres => "postgres-primary-loss",
        Target::Analytics => "analytics-active-loss",
        Target::Both => "postgres-primary-and-analytics-active-loss",
    };
    let mut drill = json!({
        "eventId": format!("drill-{run_id}"),
        "region": args.region,
        "scenario": scenario,
        "startedAt": rfc3339(killed_wall),
        "failoverCompletedAt": rfc3339(failover_at.or(restored_at).unwrap_or_else(SystemTime::now)),
        "restoredAt": rfc3339(restored_at.unwrap_or_else(SystemTime::now)),
        "lastDurableWriteAt": rfc3339(last_durable),
        "steps": steps.iter().map(|(name, ok, detail)| json!({
            "name": name,
            "outcome": match (skipped.contains(name), *ok) {
                (true, _) => "STEP_OUTCOME_SKIPPED",
                (false, true) => "STEP_OUTCOME_PASSED",
                (false, false) => "STEP_OUTCOME_FAILED",
            },
            "detail": detail,
        })).collect::<Vec<_>>(),
        "rtoTarget": proto_duration(args.rto_target),
    });
    if args.rpo_target == 0 {
        drill["rpoTarget"] = json!("0s");
    }
    // A request the edge's per-tenant rate limit refused (429) never
    // reached Analytics: it is sent again for a while (the drill's own
    // checks, one request per acknowledged event, may have used the
    // tenant's budget just before).
    let record_token = token("drills:write")?;
    let record_body = drill.to_string();
    let rate_limited_until = Instant::now() + checks::RATE_LIMITED_WAIT;
    let (status, body) = loop {
        let answer = request(
            http::Method::POST,
            &authority,
            "/v1/drills/disaster",
            Some(&record_token),
            Some(record_body.as_bytes()),
        )
        .await?;
        if answer.0 != http::StatusCode::TOO_MANY_REQUESTS || Instant::now() > rate_limited_until {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if status != http::StatusCode::OK {
        bail!(
            "recording the drill: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let recorded: Value = serde_json::from_slice(&body)?;
    // (proto3 JSON leaves `passed: false` and an empty list out.)
    let judged_passed = recorded["passed"].as_bool().unwrap_or(false);
    progress(format_args!(
        "recorded drill-{run_id} in Analytics: {} against its objectives {}",
        if judged_passed { "passed" } else { "failed" },
        recorded["failureReasons"]
    ));

    let rto_seconds = rto.map_or(f64::INFINITY, |rto| rto.as_secs_f64());
    let steps_passed = steps.iter().all(|(_, ok, _)| *ok);
    // Every check is a step and the targets travel with the drill, so
    // Analytics fails whatever failed here; its verdict can only be
    // stricter (a configured objective tighter than the drill's target).
    let passed = recovered && rto_ok && steps_passed && judged_passed;
    progress(format_args!(
        "targets: rto <= {}s {}, rpo <= {} events {}",
        args.rto_target.as_secs_f64(),
        if rto_ok { "held" } else { "missed" },
        args.rpo_target,
        if rpo_events <= args.rpo_target {
            "held"
        } else {
            "missed"
        },
    ));
    crate::cli::say(format_args!(
        "rto_seconds={rto_seconds:.9} rpo_events={rpo_events}"
    ));
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Checks where the plan comes from: a file or the installed capsule, not
/// both; `--environment` only with `--capsule`; a capsule's name as the
/// bundle's rule has it. `Err`: the usage error.
pub(crate) fn plan_sources(
    plan: &Option<PathBuf>,
    capsule: Option<&str>,
    given: &BTreeSet<String>,
) -> Result<(), String> {
    match (plan, capsule) {
        (Some(_), Some(_)) => Err(
            "--plan and --capsule exclude each other: the plan comes from a file or from the installed capsule"
                .to_owned(),
        ),
        (_, None) if given.contains("environment") => {
            Err("--environment is the installed capsule's: it goes with --capsule".to_owned())
        }
        (_, Some(name)) if !capsule::valid_name(name) => Err(format!(
            "--capsule {name:?}: 1 to 64 of [a-z0-9._-], starting with a letter or digit"
        )),
        _ => Ok(()),
    }
}

/// `DIR/endpoints.json` of the running `soma up`.
fn endpoints(data_dir: &std::path::Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(
        &std::fs::read(data_dir.join("endpoints.json")).with_context(|| {
            format!(
                "reading {}/endpoints.json (is `soma up` running?)",
                data_dir.display()
            )
        })?,
    )?)
}

/// The checks after recovery, as steps: `ledger` and `services`, each
/// passed, failed or (left out of the plan) skipped — named in the second
/// list —, each with a progress line.
async fn after_recovery(
    args: &DrillArgs,
    authority: &http::uri::Authority,
    token: &str,
    endpoints: &Value,
    before: Option<&checks::Before>,
    load: &Load,
) -> (Vec<(String, bool, String)>, BTreeSet<String>) {
    let mut steps = Vec::new();
    let outcome = match before {
        None => None,
        Some(before) => {
            let acked: BTreeSet<String> = load.acks.keys().cloned().collect();
            Some(checks::ledger(authority, token, &args.data_dir, before, &acked).await)
        }
    };
    steps.push(step("ledger", outcome));
    let outcome = if args.checks.services.is_empty() {
        None
    } else {
        Some(checks::services(endpoints, &args.checks.services).await)
    };
    steps.push(step("services", outcome));
    let skipped = steps
        .iter()
        .filter(|(_, _, detail)| detail == SKIPPED)
        .map(|(name, _, _)| name.clone())
        .collect();
    (steps, skipped)
}

/// The detail of a step the plan leaves out.
const SKIPPED: &str = "skipped: not in the plan";

/// A check's step (`None`: skipped, not in the plan), announced by a
/// progress line.
fn step(name: &str, outcome: Option<Result<String, String>>) -> (String, bool, String) {
    let (ok, detail) = match outcome {
        None => (true, SKIPPED.to_owned()),
        Some(Ok(detail)) => (true, detail),
        Some(Err(why)) => (false, why),
    };
    progress(format_args!(
        "{name}: {} {detail}",
        if ok { "ok:" } else { "FAILED:" }
    ));
    // Analytics takes a step's detail as one line of at most 1024
    // characters (a reason may quote a multi-line answer).
    let detail: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    (name.to_owned(), ok, detail)
}

/// A duration in proto3 JSON (`0.001000000s`).
fn proto_duration(d: Duration) -> String {
    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
}

/// The Analytics instances of a `soma up --analytics-standby`, by instance
/// name (`analytics`, `analytics-2`), with their admin addresses.
struct AnalyticsInstances {
    data_dir: PathBuf,
    admin: Vec<(String, http::uri::Authority)>,
}

impl AnalyticsInstances {
    /// The instances `endpoints.json` names; `None` with fewer than two
    /// (no standby: nothing would take over).
    fn of(data_dir: &std::path::Path, endpoints: &Value) -> anyhow::Result<Option<Self>> {
        let mut admin = Vec::new();
        if let Some(all) = endpoints["admin"].as_object() {
            for (name, addr) in all {
                let analytics = name == "analytics" || name == crate::up::ANALYTICS_STANDBY;
                if let (true, Some(addr)) = (analytics, addr.as_str()) {
                    admin.push((
                        name.clone(),
                        crate::cli::edge_authority(&format!("http://{addr}"))?,
                    ));
                }
            }
        }
        Ok((admin.len() >= 2).then(|| Self {
            data_dir: data_dir.to_owned(),
            admin,
        }))
    }

    /// Whether `authority`'s `/readyz` answers 200: that instance holds the
    /// ledger writer's lease (a standby answers 503, `standby`).
    async fn ready(authority: &http::uri::Authority) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                request(http::Method::GET, authority, "/readyz", None, None),
            )
            .await,
            Ok(Ok((status, _))) if status == http::StatusCode::OK
        )
    }

    /// The instance holding the lease (the one ready) and its pid, from
    /// `pids.json`, checked to be a `soma serve analytics` process. Waits
    /// up to `within` for exactly one to be ready; two ready at once would
    /// be two writers, and is an error.
    async fn active(&self, within: Duration) -> anyhow::Result<(String, u32)> {
        let deadline = Instant::now() + within;
        let name = loop {
            let mut ready = Vec::new();
            for (name, authority) in &self.admin {
                if Self::ready(authority).await {
                    ready.push(name.clone());
                }
            }
            match ready.as_slice() {
                [one] => break one.clone(),
                [] if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                [] => bail!("no Analytics instance is ready: none holds the ledger writer's lease"),
                _ => bail!("Analytics instances {ready:?} are all ready at once: two writers"),
            }
        };
        let pid = *self
            .pids()?
            .get(&name)
            .ok_or_else(|| anyhow!("pids.json has no {name}"))?;
        // The pid must still be that instance's process, never another that
        // came to hold the number.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !(args.get(1) == Some(&&b"serve"[..]) && args.get(2) == Some(&&b"analytics"[..])) {
            bail!("pid {pid} of {name} is not a `soma serve analytics` process");
        }
        Ok((name, pid))
    }

    /// Each instance's current pid (`soma up` rewrites `pids.json` at
    /// every restart).
    fn pids(&self) -> anyhow::Result<BTreeMap<String, u32>> {
        Ok(serde_json::from_slice(
            &std::fs::read(self.data_dir.join("pids.json")).with_context(|| {
                format!(
                    "reading {}/pids.json (soma up writes it)",
                    self.data_dir.display()
                )
            })?,
        )?)
    }

    /// An instance ready now that is not the process killed (`killed`'s
    /// process `pid`): the other instance, or `killed` restarted by
    /// `soma up`, whichever took the lease.
    async fn ready_other_than(&self, killed: &str, pid: u32) -> Option<String> {
        for (name, authority) in &self.admin {
            if !Self::ready(authority).await {
                continue;
            }
            if name != killed {
                return Some(name.clone());
            }
            if self.pids().ok()?.get(name).is_some_and(|now| *now != pid) {
                return Some(format!("{name} (restarted)"));
            }
        }
        None
    }
}

/// The current leader of the HA stack and its data directory, from the
/// first member whose Patroni REST API answers.
async fn current_leader(cluster: &Value) -> anyhow::Result<(String, String)> {
    let members = cluster["members"]
        .as_array()
        .ok_or_else(|| anyhow!("cluster.json has no members"))?;
    for member in members {
        let Some(rest) = member["rest"].as_str() else {
            continue;
        };
        let Ok(authority) = crate::cli::edge_authority(rest) else {
            continue;
        };
        let Ok(Ok((status, body))) = tokio::time::timeout(
            Duration::from_secs(2),
            request(http::Method::GET, &authority, "/cluster", None, None),
        )
        .await
        else {
            continue;
        };
        if status != http::StatusCode::OK {
            continue;
        }
        let view: Value = serde_json::from_slice(&body)?;
        let Some(name) = view["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "leader"))
            .and_then(|m| m["name"].as_str())
        else {
            continue;
        };
        let data_dir = members
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["data_dir"].as_str())
            .ok_or_else(|| anyhow!("leader {name} is not in cluster.json"))?;
        return Ok((name.to_owned(), data_dir.to_owned()));
    }
    bail!("no Patroni member names a leader")
}

/// The event ids of the drill's run in the tenant's signed export of
/// capsule runs since `since`.
async fn exported_event_ids(
    authority: &http::uri::Authority,
    token: &str,
    since: SystemTime,
    run_id: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let from = rfc3339(since - Duration::from_secs(60));
    let to = rfc3339(SystemTime::now() + Duration::from_secs(60));
    let path = format!("/v1/exports/capsule-runs?from={from}&to={to}");
    let (status, body) = request(http::Method::GET, authority, &path, Some(token), None).await?;
    if status != http::StatusCode::OK {
        bail!("export: {status}: {}", String::from_utf8_lossy(&body));
    }
    let mut data = Vec::new();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let chunk: Value = serde_json::from_slice(line)?;
        if let Some(d) = chunk["data"].as_str() {
            data.extend(base64::engine::general_purpose::STANDARD.decode(d)?);
        }
    }
    let document: Value = serde_json::from_slice(&data).context("the export's document")?;
    let prefix = format!("drill-{run_id}-");
    Ok(document["rows"]
        .as_array()
        .ok_or_else(|| anyhow!("the export has no rows"))?
        .iter()
        .filter_map(|row| row["event_id"].as_str())
        .filter(|id| id.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

/// `t` as RFC 3339 (UTC, nanoseconds).
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}
