//! `soma up --database-url` on the HA stack of `scripts/ops/ha-up.sh`:
//! Patroni with etcd, two PostgreSQL 15 members with strict synchronous
//! replication, HAProxy routing to the primary by Patroni's health check —
//! the real engines, started by the script, on loopback ports away from
//! 5432.
//!
//! Under a steady write load through the JSON edge (capsule run events,
//! each retried with its own event id until acknowledged), the primary's
//! postmaster is killed with SIGKILL, ten times over: each time Patroni
//! promotes the synchronous standby, HAProxy follows it, the services
//! reconnect by themselves, and in the end every acknowledged event is in
//! Analytics' ledger exactly once (RPO 0); `soma verify store` sweeps the
//! ledger after it (every row and leaf authenticated, the leaves and rows
//! one to one). Each RTO (the kill to the first acknowledgement of a write
//! sent after it) and their distribution are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cli::{ok, soma, wait_for_edge};
use common::ha::{Load, Stack, missing_from_store, script};
use serde_json::{Value, json};

/// Primaries killed one after the other in one run.
const KILLS: usize = 10;

/// Ten consecutive primary kills under one steady load: every
/// acknowledged event in the ledger exactly once in the end (RPO 0 in
/// total), each recovery under the 15 s, the RTO distribution
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_killed_primaries_lose_no_acknowledged_event() {
    let _one_at_a_time = common::ha::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::up(dir.path().join("ha"));
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &["--database-url", &stack.url]);
    let edge = wait_for_edge(&data).await;
    let token = ok(&soma(
        &[
            "token",
            "--data-dir",
            data.to_str().unwrap(),
            "--tenant",
            "acme",
            "--region",
            "local",
            "--scope",
            "analytics:ingest",
        ],
        dir.path(),
    ))
    .trim()
    .to_owned();

    // Four writers, each sending its events in order, each event until it
    // is acknowledged.
    let load = Load::start(&edge, &token, "ha");
    load.wait_for(40, Duration::from_secs(30)).await;

    // Ten primaries killed one after the other, each once the cluster has
    // a synchronous standby again; each recovery is a new leader, then 20
    // writes sent after it and after the outage became visible,
    // acknowledged.
    let mut rtos = Vec::new();
    for kill in 1..=KILLS {
        stack.wait_for_sync_standby().await;
        let leader = stack.leader().await;
        let postmaster = stack.postmaster(&leader);
        let killed_at = Instant::now();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &postmaster.to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -KILL {postmaster}");
        let deadline = killed_at + Duration::from_secs(60);
        let new_leader = loop {
            if let Some(now_leader) = stack.try_leader().await
                && now_leader != leader
            {
                break now_leader;
            }
            assert!(
                Instant::now() < deadline,
                "kill {kill}: no new leader within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let promoted_seen = Instant::now();
        load.wait_for_recovery(killed_at, promoted_seen, 20, Duration::from_secs(60))
            .await;
        let rto = load.acks.lock().unwrap().rto(killed_at).unwrap();
        println!(
            "kill {kill}: primary {leader} (postmaster {postmaster}) killed; new primary {new_leader}; rto_seconds={:.3}",
            rto.as_secs_f64()
        );
        assert!(
            rto < Duration::from_secs(15),
            "kill {kill}: rto {rto:?} (the bound is 15 s)"
        );
        rtos.push(rto);
    }
    let acks = load.finish().await;
    rtos.sort();
    // A retried event is answered with its stored record: never a conflict.
    assert!(!acks.refusals.contains_key(&409), "{:?}", acks.refusals);
    println!(
        "{KILLS} primary kills: rto_seconds min {:.3} median {:.3} max {:.3}; acknowledged {}; refusals by status {:?}",
        rtos[0].as_secs_f64(),
        rtos[rtos.len() / 2].as_secs_f64(),
        rtos[rtos.len() - 1].as_secs_f64(),
        acks.at.len(),
        acks.refusals
    );

    // Every acknowledged event is in Analytics' database exactly once.
    let analytics_url = stack.service_url("analytics");
    let missing = missing_from_store(&analytics_url, "acme", "ha", &acks).await;
    println!("rpo_events={} (of {} acknowledged)", missing.len(), acks.at.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");

    // The ledger after the failover: every row and leaf authenticated, one
    // to one, without a gap.
    let swept = soma(
        &[
            "verify",
            "store",
            "--data-dir",
            data.to_str().unwrap(),
            "--service",
            "analytics",
            "--database-url",
            &analytics_url,
        ],
        dir.path(),
    );
    ok(&swept);

    up.kill().await.unwrap();
}

/// A duration in seconds with up to nine decimals (`12.129284679`, or
/// proto3 JSON's `12.129284679s`), in nanoseconds, exactly.
fn nanos(text: &str) -> i64 {
    let text = text.trim_end_matches('s');
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(fraction.len() <= 9, "{text}");
    seconds.parse::<i64>().unwrap() * 1_000_000_000 + format!("{fraction:0<9}").parse::<i64>().unwrap()
}

/// A span as Analytics writes it in a failure reason (`4.5s`, `16s`).
fn span(nanos: i64) -> String {
    let (s, n) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    if n == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{n:09}").trim_end_matches('0'))
    }
}

/// A drill's figures: its event id (from its progress lines), its RTO in
/// nanoseconds and its lost events (its last line).
struct Figures {
    event_id: String,
    rto_nanos: i64,
    rpo_events: u64,
}

/// The figures of a drill's output: `stdout` ends with its last line,
/// `stderr` holds its progress lines.
fn figures(stdout: &str, stderr: &str) -> Figures {
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("rto_seconds="))
        .unwrap_or_else(|| panic!("no figures in {stdout:?}; stderr: {stderr}"));
    let fields: BTreeMap<&str, &str> = last.split(' ').filter_map(|f| f.split_once('=')).collect();
    assert_eq!(fields.len(), 2, "last line: {last:?}");
    let event_id = stderr
        .split("recorded ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no recorded drill in {stderr}"))
        .to_owned();
    Figures {
        event_id,
        rto_nanos: nanos(fields["rto_seconds"]),
        rpo_events: fields["rpo_events"].parse().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The failover drill end to end on the real HA stack, one stack for all
/// of it: `soma up` judges drills against its region's objectives and
/// notifies a real webhook receiver; `scripts/ops/run_failover_drill.sh`
/// (the seed's drill) kills the primary under load, measures RTO and RPO
/// from outside, checks the ledger against the checkpoint it kept before
/// the kill and the services' readiness, records the drill with its
/// targets and exits with Analytics' verdict. A bad plan is refused (64)
/// before anything is killed; a 1 ms RTO target (and a ledger check
/// against a key Analytics does not sign with) fails the drill, exit 1, and
/// the receiver gets the signed notification, verified with the keyring of
/// the data dir; the failed-drill runbook, whose last block runs the
/// repository's plan (RTO under 15 s, RPO 0, the ledger and services
/// checked), and the lost-primary runbook run against the stack; a
/// scheduled drill with its own plan is persisted, listed, run by the
/// scheduler and recorded, and the checkpoint it kept before its kill
/// verifies with `soma verify ledger`; the summary lists the three drills
/// with exactly the RTO and RPO they measured; an Analytics target on a
/// stack without an Analytics standby is refused with exit 64
/// (`ha_standby.rs` drills one that has it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_drill_measures_rto_and_rpo_and_exits_non_zero_when_a_target_is_missed() {
    let _one_at_a_time = common::ha::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ha = dir.path().join("ha");
    let stack = Stack::up(ha.clone());
    let data = dir.path().join("data");
    let (hook_url, hooks) = common::webhook::receiver().await;
    // The region's RTO objective is generous (the machine may be loaded):
    // the drills' own targets are what holds them to 15 s here.
    let mut up = common::spawn_soma_up(
        &data,
        &[
            "--database-url",
            &stack.url,
            "--drill-webhook",
            &hook_url,
            "--drill-rto-objective",
            "60s",
        ],
    );
    let edge = wait_for_edge(&data).await;
    let data_arg = data.to_str().unwrap().to_owned();
    let ha_arg = ha.to_str().unwrap().to_owned();
    let drill = |extra: Vec<String>| {
        let (data_arg, ha_arg) = (data_arg.clone(), ha_arg.clone());
        async move {
            let output = tokio::process::Command::new(script("run_failover_drill.sh"))
                .args(["--data-dir", &data_arg, "--ha-dir", &ha_arg])
                .args(&extra)
                .env("SOMA", common::cli::SOMA)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap();
            let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
            (output.status.code(), stdout, stderr)
        }
    };
    let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    // A plan this soma cannot read is refused before anything is killed.
    let repository_plan: Value =
        serde_json::from_str(&std::fs::read_to_string(script("dr_failover_drill.plan.json")).unwrap())
            .unwrap();
    let leader = stack.leader().await;
    for (name, edit, reason) in [
        (
            "newer.json",
            json!({"version": 2}),
            "version 2 is not supported: this soma reads plans of version 1",
        ),
        ("unknown.json", json!({"rto": "15s"}), "unknown field `rto`"),
    ] {
        let mut plan = repository_plan.clone();
        plan.as_object_mut()
            .unwrap()
            .extend(edit.as_object().unwrap().clone());
        let path = dir.path().join(name);
        std::fs::write(&path, plan.to_string()).unwrap();
        let (code, _, stderr) =
            drill(args(&["--target", "postgres", "--plan", path.to_str().unwrap()])).await;
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
    }
    assert_eq!(stack.leader().await, leader, "a refused plan killed the primary");

    // 1. From its flags: a target nothing can meet, and a ledger checked against a key
    // Analytics does not sign with: measured, recorded, exit 1, notified.
    stack.wait_for_sync_standby().await;
    let public_key = data.join("public-keys/analytics-1.pem");
    let trusted = std::fs::read(&public_key).unwrap();
    let (other, _) =
        soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1").unwrap()).unwrap();
    std::fs::write(&public_key, other.public_key_pem()).unwrap();
    let (code, stdout, stderr) = drill(args(&[
        "--target",
        "postgres",
        "--rto-target",
        "1ms",
        "--before",
        "20",
        "--after",
        "20",
    ]))
    .await;
    std::fs::write(&public_key, &trusted).unwrap();
    println!("drill 1:\n{stderr}{stdout}");
    assert_eq!(code, Some(1), "{stderr}");
    let missed = figures(&stdout, &stderr);
    assert_eq!(missed.rpo_events, 0);
    assert!(
        stderr.contains("drill: ledger: FAILED: soma verify ledger: "),
        "{stderr}"
    );
    let reasons = json!([
        "step \"ledger\" failed",
        format!("rto {} exceeds the drill's target 0.001s", span(missed.rto_nanos)),
    ]);
    assert!(
        stderr.contains(&format!("failed against its objectives {reasons}")),
        "{stderr}"
    );

    // The receiver gets the signed notification of drill 2 (and of no
    // passing drill): verified with the keyring soma up generated.
    let keys_file = data.join("secrets/analytics-webhook-keys.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&keys_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", keys_file.display());
    }
    let keyring = soma_sign::HmacKeyring::load(&keys_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (headers, body) = loop {
        if let Some(hook) = hooks.lock().unwrap().first().cloned() {
            break hook;
        }
        assert!(Instant::now() < deadline, "no notification within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    let (id, timestamp, key_id) = (
        header("x-soma-webhook-id"),
        header("x-soma-webhook-timestamp"),
        header("x-soma-webhook-key-id"),
    );
    let tag: Vec<u8> = {
        let hex = header("x-soma-webhook-signature");
        let hex = hex.strip_prefix("v1=").unwrap();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let signed = |body: &[u8]| [format!("{timestamp}.{id}.").as_bytes(), body].concat();
    keyring.verify(&key_id, &signed(&body), &tag).unwrap();
    assert!(
        keyring
            .verify(&key_id, &signed(&[&body[..], b" "].concat()), &tag)
            .is_err()
    );
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "disaster_drill.failed");
    assert_eq!(event["event_id"], missed.event_id.as_str());
    assert_eq!(event["tenant"], "drill");
    assert_eq!(event["failure_reasons"], reasons);
    assert_eq!(event["rto_nanos"], missed.rto_nanos.to_string());
    assert_eq!(event["objective_rto_nanos"], "1000000");
    assert_eq!(event["objective_rpo_nanos"], "0");

    // The failed-drill runbook against the stack: it finds drill 1 and
    // why, re-verifies its ledger files with the trusted key, and its
    // last block runs the repository's plan (drill 2: within 15 s,
    // nothing lost, the ledger and the services checked); then the lost
    // primary runbook, right after that drill's failover.
    stack.wait_for_sync_standby().await;
    let runbook = |name: &'static str| {
        let (data_arg, ha_arg) = (data_arg.clone(), ha_arg.clone());
        tokio::task::spawn_blocking(move || {
            common::runbooks::run(
                name,
                &[
                    ("SOMA_DATA", data_arg.as_str()),
                    ("REGION", "local"),
                    ("HA_DIR", ha_arg.as_str()),
                ],
            )
        })
    };
    let output = runbook("failed-drill.md").await.unwrap();
    common::runbooks::assert_ran("failed-drill.md", &output);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    println!("failed-drill.md:\n{stderr}{stdout}");
    assert!(
        stdout.contains(&format!("the last failed drill: {}", missed.event_id)),
        "{stdout}"
    );
    assert!(stdout.contains("valid: "), "{stdout}");
    let planned = figures(&stdout, &stderr);
    assert!(
        planned.rto_nanos > 0 && planned.rto_nanos < 15_000_000_000,
        "rto {}",
        planned.rto_nanos
    );
    assert_eq!(planned.rpo_events, 0);
    assert!(stderr.contains("drill: ledger: ok: "), "{stderr}");
    assert!(
        stderr.contains("drill: services: ok: ready: gateway, tool-registry, capsule-repo, analytics"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("recorded {} in Analytics: passed", planned.event_id)),
        "{stderr}"
    );
    assert_eq!(hooks.lock().unwrap().len(), 1, "a passing drill notified");
    // The repository's plan drove it: its targets and load.
    assert!(
        stderr.contains(
            "drill: plan dr_failover_drill v1 from scripts/ops/dr_failover_drill.plan.json: rto target 15s, \
             rpo target 0 events, 4 writers, 40 before, 40 after, timeout 2m"
        ),
        "{stderr}"
    );
    let output = runbook("lost-postgres-primary.md").await.unwrap();
    common::runbooks::assert_ran("lost-postgres-primary.md", &output);
    let stdout = text(&output.stdout);
    println!("lost-postgres-primary.md:\n{}{stdout}", text(&output.stderr));
    assert!(stdout.contains("leader: "), "{stdout}");
    assert!(stdout.contains("valid: "), "{stdout}");

    // 3. A scheduled drill with its own plan (three writers, no services
    // step, a 1 min RTO target): persisted, listed, run by the scheduler,
    // recorded.
    let mut plan = repository_plan.clone();
    plan["load"]["writers"] = json!(3);
    plan["targets"]["rto"] = json!("60s");
    plan["steps"] = json!(["load", "kill", "recovery", "rpo", "ledger"]);
    let plan_path = dir.path().join("nightly.plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let scheduled = soma(
        &[
            "drill",
            "schedule",
            "--data-dir",
            &data_arg,
            "--every",
            "24h",
            "--id",
            "nightly",
            "--",
            "--target",
            "postgres",
            "--ha-dir",
            &ha_arg,
            "--plan",
            plan_path.to_str().unwrap(),
            "--before",
            "20",
            "--after",
            "20",
        ],
        dir.path(),
    );
    assert!(ok(&scheduled).contains("scheduled nightly: every 1day, first run due now"));
    let listed = ok(&soma(
        &["drill", "schedule", "--data-dir", &data_arg, "--list"],
        dir.path(),
    ));
    assert!(
        listed.starts_with("nightly every 1day next ")
            && listed.contains(" never run args: --target postgres"),
        "{listed}"
    );
    stack.wait_for_sync_standby().await;
    let ran = tokio::process::Command::new(common::cli::SOMA)
        .args(["drill", "scheduler", "--data-dir", &data_arg, "--once"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (text(&ran.stdout), text(&ran.stderr));
    println!("scheduler:\n{stderr}{stdout}");
    assert_eq!(ran.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("scheduler: running nightly"), "{stdout}");
    assert!(
        stdout.contains("scheduler: nightly exited 0: rto_seconds="),
        "{stdout}"
    );
    // Its plan drove it, the command line overriding the load's counts.
    assert!(
        stderr.contains(&format!(
            "drill: plan dr_failover_drill v1 from {}: rto target 1m, rpo target 0 events, 3 writers, \
             20 before, 20 after, timeout 2m",
            plan_path.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("drill: load: 3 writers"), "{stderr}");
    assert!(
        stderr.contains("drill: services: ok: skipped: not in the plan"),
        "{stderr}"
    );
    let nightly = figures(
        stdout
            .split("exited 0: ")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
        &stderr,
    );
    let listed = ok(&soma(
        &["drill", "schedule", "--data-dir", &data_arg, "--list"],
        dir.path(),
    ));
    assert!(listed.contains(" exit 0 (rto_seconds="), "{listed}");
    // Claimed for a day: a second pass runs nothing.
    let again = soma(
        &["drill", "scheduler", "--data-dir", &data_arg, "--once"],
        dir.path(),
    );
    assert_eq!(ok(&again), "");

    // The checkpoint the scheduled drill kept before its kill verifies
    // against the ledger after recovery, with `soma verify ledger`.
    let kept = data.join("drills").join(&nightly.event_id);
    let verified = ok(&soma(
        &[
            "verify",
            "ledger",
            "--checkpoint",
            kept.join("checkpoint-after.note").to_str().unwrap(),
            "--previous-checkpoint",
            kept.join("checkpoint-before.note").to_str().unwrap(),
            "--consistency",
            kept.join("consistency.json").to_str().unwrap(),
            "--public-key",
            public_key.to_str().unwrap(),
        ],
        dir.path(),
    ));
    assert!(
        verified.starts_with("valid: ") && verified.contains(" extends tree size "),
        "{verified}"
    );

    // The summary shows the three drills with exactly the RTO and RPO they
    // measured, and their verdicts.
    let token = ok(&soma(
        &[
            "token",
            "--data-dir",
            data.to_str().unwrap(),
            "--tenant",
            "drill",
            "--region",
            "local",
            "--scope",
            "drills:read",
        ],
        dir.path(),
    ))
    .trim()
    .to_owned();
    let http = common::edge::client();
    let summary = common::edge::send(
        &http,
        "GET",
        &format!("{edge}/v1/drills/disaster/summary"),
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!(summary.status, 200, "{}", String::from_utf8_lossy(&summary.body));
    let summary = summary.json();
    let local = summary["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "local")
        .unwrap_or_else(|| panic!("no local region: {summary}"))
        .clone();
    let count: u64 = local["count"]
        .as_str()
        .map_or_else(|| local["count"].as_u64().unwrap(), |c| c.parse().unwrap());
    assert_eq!(count, 3, "{summary}");
    let recent = local["recent"].as_array().unwrap();
    let recorded: Vec<(&str, i64, i64, bool)> = recent
        .iter()
        .map(|d| {
            (
                d["eventId"].as_str().unwrap(),
                nanos(d["rto"].as_str().unwrap()),
                d["rpo"].as_str().map_or(0, nanos),
                d["passed"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    // Newest first: the scheduled drill, the runbook's, drill 1.
    assert_eq!(
        recorded,
        [
            (nightly.event_id.as_str(), nightly.rto_nanos, 0, true),
            (planned.event_id.as_str(), planned.rto_nanos, 0, true),
            (missed.event_id.as_str(), missed.rto_nanos, 0, false),
        ],
        "{summary}"
    );
    assert_eq!(recent[2]["failureReasons"], reasons);

    // No Analytics standby on this stack: nothing would take over;
    // refused, exit 64, nothing killed.
    let (code, _, stderr) = drill(args(&["--target", "analytics", "--rto-target", "15s"])).await;
    assert_eq!(code, Some(64), "{stderr}");

    up.kill().await.unwrap();
}
