//! Scheduled drills without a stack to drill: `soma drill schedule`
//! persists, lists and removes, refusing what `soma drill run` would refuse;
//! `soma drill scheduler --once` runs what is due and records its outcome;
//! and the Kubernetes CronJob that runs the drill every night validates with
//! the other manifests (`deploy/validate.sh`, kubernetes-validate --strict,
//! the kustomize build included), fails validation when it carries an unknown
//! field, and runs a command line `soma` parses that takes its plan from the
//! installed `dr_failover_drill` capsule. (A due drill run against the Patroni stack and recorded in
//! Analytics: `ha_failover.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::cli::SOMA;
use serde_json::Value;

fn soma(args: &[&str]) -> Output {
    std::process::Command::new(SOMA)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_schedule_is_persisted_listed_and_removed_and_refuses_what_a_drill_would() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let plan = repository().join("scripts/ops/dr_failover_drill.plan.json");
    let plan_arg = plan.to_str().unwrap();

    let empty = soma(&["drill", "schedule", "--data-dir", data_arg, "--list"]);
    assert_eq!(stdout(&empty), "no scheduled drills\n", "{}", stderr(&empty));

    // Added twice: with and without `--` before the drill's arguments.
    let added = soma(&[
        "drill",
        "schedule",
        "--data-dir",
        data_arg,
        "--every",
        "24h",
        "--id",
        "nightly",
        "--target",
        "postgres",
        "--plan",
        plan_arg,
    ]);
    assert_eq!(added.status.code(), Some(0), "{}", stderr(&added));
    assert!(stdout(&added).starts_with("scheduled nightly: every 1day, first run due now"));
    let added = soma(&[
        "drill",
        "schedule",
        "--data-dir",
        data_arg,
        "--every",
        "6h",
        "--",
        "--target",
        "postgres",
        "--rto-target",
        "10s",
    ]);
    assert_eq!(added.status.code(), Some(0), "{}", stderr(&added));
    assert!(
        stdout(&added).starts_with("scheduled drill-1: every 6h"),
        "{}",
        stdout(&added)
    );

    // Persisted in the data dir, each drill's arguments as given (paths
    // made absolute), its first run due now.
    let file: Value =
        serde_json::from_slice(&std::fs::read(data.join("drills/schedule.json")).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
    let drills = file["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 2);
    assert_eq!(drills[0]["id"], "nightly");
    assert_eq!(drills[0]["every"], "1day");
    assert_eq!(
        drills[0]["args"],
        serde_json::json!([
            "--target",
            "postgres",
            "--plan",
            std::path::absolute(&plan).unwrap().to_str().unwrap()
        ])
    );
    assert_eq!(drills[0]["next_run_at"], drills[0]["created_at"]);
    assert_eq!(drills[0]["last_run"], Value::Null);
    assert_eq!(
        drills[1]["args"],
        serde_json::json!(["--target", "postgres", "--rto-target", "10s"])
    );

    let listed = stdout(&soma(&["drill", "schedule", "--data-dir", data_arg, "--list"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with("nightly every 1day next ")
            && lines[0].contains(" never run args: --target postgres --plan ")
    );
    assert!(lines[1].starts_with("drill-1 every 6h next "), "{listed}");

    // Refused, with nothing written: what `soma drill run` would refuse, a
    // taken name, a period under a minute.
    let bad_plan = dir.path().join("bad.plan.json");
    std::fs::write(&bad_plan, r#"{"version": 2}"#).unwrap();
    struct Case {
        name: &'static str,
        args: Vec<String>,
        code: i32,
        expected: &'static str,
    }
    let with = |extra: &[&str]| {
        ["drill", "schedule", "--data-dir", data_arg]
            .iter()
            .chain(extra)
            .map(|a| (*a).to_owned())
            .collect::<Vec<_>>()
    };
    let cases = [
        Case {
            name: "an unknown drill flag",
            args: with(&["--every", "24h", "--", "--target", "postgres", "--rto", "1s"]),
            code: 64,
            expected: "the drill's arguments: unexpected argument '--rto' found",
        },
        Case {
            name: "a bad target",
            args: with(&[
                "--every",
                "24h",
                "--",
                "--target",
                "postgres",
                "--rto-target",
                "soon",
            ]),
            code: 64,
            expected: "the drill's arguments: invalid value 'soon' for '--rto-target <RTO_TARGET>'",
        },
        Case {
            name: "the drill's own data dir",
            args: with(&[
                "--every",
                "24h",
                "--",
                "--target",
                "postgres",
                "--data-dir",
                "/elsewhere",
            ]),
            code: 64,
            expected: "the drill's --data-dir is the schedule's",
        },
        Case {
            name: "a plan of another version",
            args: with(&[
                "--every",
                "24h",
                "--",
                "--target",
                "postgres",
                "--plan",
                bad_plan.to_str().unwrap(),
            ]),
            code: 64,
            expected: "version 2 is not supported: this soma reads plans of version 1",
        },
        Case {
            name: "a taken name",
            args: with(&["--every", "24h", "--id", "nightly", "--", "--target", "postgres"]),
            code: 64,
            expected: "--id \"nightly\": a scheduled drill has that name",
        },
        Case {
            name: "a name that is not one",
            args: with(&["--every", "24h", "--id", "night ly", "--", "--target", "postgres"]),
            code: 64,
            expected: "--id \"night ly\": 1 to 64 letters",
        },
        Case {
            name: "every 30 s",
            args: with(&["--every", "30s", "--", "--target", "postgres"]),
            code: 2,
            expected: "must be at least 1m",
        },
    ];
    let before = std::fs::read(data.join("drills/schedule.json")).unwrap();
    for case in cases {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let output = soma(&args);
        assert_eq!(
            output.status.code(),
            Some(case.code),
            "{}: {}",
            case.name,
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(case.expected),
            "{}: {}",
            case.name,
            stderr(&output)
        );
    }
    assert_eq!(std::fs::read(data.join("drills/schedule.json")).unwrap(), before);

    // Removed by name; an unknown name is refused.
    let removed = soma(&["drill", "schedule", "--data-dir", data_arg, "--remove", "drill-1"]);
    assert_eq!(stdout(&removed), "removed drill-1\n");
    let unknown = soma(&["drill", "schedule", "--data-dir", data_arg, "--remove", "drill-1"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("no scheduled drill \"drill-1\""));
    let listed = stdout(&soma(&["drill", "schedule", "--data-dir", data_arg, "--list"]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

/// Through `scripts/ops/schedule_dr_drill.sh`, with no stack behind the
/// data dir: the due drill runs and fails before
/// killing anything: the scheduler records that outcome (exit 1 and the
/// drill's reason), moves its next run a period ahead, and exits 1; a second
/// pass finds nothing due.
#[test]
fn the_scheduler_runs_a_due_drill_once_and_records_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    // Through the seed's script: `soma drill schedule`, and with `run`,
    // `soma drill scheduler`.
    let script = |args: &[&str]| {
        std::process::Command::new(repository().join("scripts/ops/schedule_dr_drill.sh"))
            .args(args)
            .env("SOMA", SOMA)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let added = script(&[
        "--data-dir",
        data_arg,
        "--every",
        "1h",
        "--id",
        "hourly",
        "--",
        "--target",
        "postgres",
    ]);
    assert_eq!(added.status.code(), Some(0), "{}", stderr(&added));

    let ran = script(&["run", "--data-dir", data_arg, "--once"]);
    assert_eq!(ran.status.code(), Some(1), "{}", stderr(&ran));
    let out = stdout(&ran);
    assert!(
        out.contains("scheduler: running hourly (soma drill run --target postgres)"),
        "{out}"
    );
    assert!(out.contains("scheduler: hourly exited 1: "), "{out}");
    // The drill's own reason reached the scheduler's standard error.
    assert!(
        stderr(&ran).contains("endpoints.json (is `soma up` running?)"),
        "{}",
        stderr(&ran)
    );

    let file: Value =
        serde_json::from_slice(&std::fs::read(data.join("drills/schedule.json")).unwrap()).unwrap();
    let entry = &file["drills"][0];
    assert_eq!(entry["last_run"]["exit_code"], 1);
    assert_ne!(entry["next_run_at"], entry["created_at"]);
    let next = entry["next_run_at"].as_str().unwrap();
    let started = entry["last_run"]["started_at"].as_str().unwrap();
    assert!(next > started, "next {next}, started {started}");

    let again = soma(&["drill", "scheduler", "--data-dir", data_arg, "--once"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again), "");
}

/// The virtualenv `deploy/validate.sh` installs kubernetes-validate into,
/// kept between runs under the target dir.
fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("k8s-validate-venv")
}

fn validate(deploy: &Path) -> Output {
    std::process::Command::new(deploy.join("validate.sh"))
        .env("VENV", venv())
        .output()
        .unwrap()
}

/// Copies `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_drill_cronjob_validates_and_runs_a_real_command_from_the_installed_plan_capsule() {
    let deploy = repository().join("deploy");
    let output = validate(&deploy);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(
        output.status.success(),
        "deploy/validate.sh failed:\n{out}\n{err}"
    );
    let all = format!("{out}{err}");
    assert!(
        all.contains("ops/dr-failover-drill.yaml passed for resource cronjob/dr-failover-drill"),
        "{all}"
    );
    let rendered = all.contains("== kustomize build deploy/") && !all.contains("SKIP rendered output");
    if rendered {
        assert!(
            all.contains("kustomize build deploy/ passed for resource cronjob/dr-failover-drill"),
            "the kustomization does not render the CronJob:\n{all}"
        );
    }

    // The container's command line, read from the manifest by the YAML
    // parser validate.sh installed, is one `soma` parses.
    let python = venv().join("bin/python");
    let read = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
             for doc in yaml.safe_load_all(open(sys.argv[1])):\n\
             \x20   if doc and doc.get('kind') == 'CronJob':\n\
             \x20       c = doc['spec']['jobTemplate']['spec']['template']['spec']['containers'][0]\n\
             \x20       print(json.dumps(c['command'] + c['args']))\n",
        )
        .arg(deploy.join("ops/dr-failover-drill.yaml"))
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", stderr(&read));
    let command: Vec<String> = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(command[..3], ["soma", "drill", "run"]);
    // Its plan is the installed capsule, never a file beside it.
    assert!(
        command
            .windows(2)
            .any(|w| w == ["--capsule", "dr_failover_drill"])
            && command.windows(2).any(|w| w == ["--environment", "production"])
            && !command.iter().any(|a| a == "--plan"),
        "{command:?}"
    );
    let mut args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    args.push("--help");
    let parsed = soma(&args);
    assert!(
        parsed.status.success(),
        "soma {}: {}",
        args.join(" "),
        stderr(&parsed)
    );

    // A CronJob with a field Kubernetes does not know fails validation.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("deploy");
    copy_tree(&deploy, &copy);
    let manifest = copy.join("ops/dr-failover-drill.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let broken = text.replacen(
        "  concurrencyPolicy: Forbid\n",
        "  concurrencyPolicy: Forbid\n  retries: 3\n",
        1,
    );
    assert_ne!(broken, text);
    std::fs::write(&manifest, broken).unwrap();
    let output = validate(&copy);
    assert!(
        !output.status.success(),
        "an unknown field passed:\n{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains("ops/dr-failover-drill.yaml"),
        "{}",
        stdout(&output)
    );
}
