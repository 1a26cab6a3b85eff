//! The failover drill's plan as the installed capsule `dr_failover_drill`
//! (`soma drill run --capsule`), end to end on real engines.
//!
//! On the HA stack of `scripts/ops/ha-up.sh` (Patroni, etcd, two
//! PostgreSQL members, HAProxy) under `soma up --database-url`: before the
//! capsule is installed, the drill is refused (`capsule_not_installed`,
//! exit 3) and nothing is killed; `scripts/ops/schedule_dr_drill.sh
//! import` publishes the plan tool's release and imports the repository's
//! bundle with the `ops` catalogue key `soma up` pinned; the drill plan
//! runbook's review and install sections approve it (a second subject,
//! with MFA) and install it; the drill then runs from the capsule's plan,
//! passes, and its record in Analytics carries the plan's 15 s target (the
//! objective stored is the stricter of the region's 60 s and the plan's).
//! A second revision whose plan sets an RTO target of 1 ms is imported,
//! approved and installed through the same runbook: a drill scheduled
//! before that installation resolves it when the scheduler runs it, and
//! the next drill fails on that target; the runbook's rollback section
//! brings revision 1's plan back. A plan in a capsule that fails the plan's
//! checks is refused naming the field, and a revoked plan release refuses
//! the drill (`release_revoked`, exit 4), each before anything is killed.
//!
//! On `soma up` with SQLite: the plan's two sources exclude each other
//! (exit 64, also for a schedule), and an operator's own catalogues file is
//! kept by `soma up` — an import attested with `soma up`'s `ops` key is
//! then refused (`catalogue_unknown`), one signed by a key the operator's
//! catalogue does not pin is refused (`attestation_key_unknown`), and
//! neither writes a submission.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::cli::{SOMA, ok, soma, wait_for_edge};
use common::ha::{Stack, script};
use serde_json::{Value, json};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `soma args` as a child process (a drill takes tens of seconds): its
/// exit code, standard output and standard error.
async fn soma_async(args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(SOMA)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// A variant of the repository's bundle: `version`, and the plan edited by
/// `edit`, written canonical to `path`.
fn bundle_variant(path: &Path, version: &str, edit: impl FnOnce(&mut Value)) {
    let mut bundle: Value =
        serde_json::from_slice(&std::fs::read(script("dr_failover_drill.capsule.json")).unwrap()).unwrap();
    bundle["version"] = json!(version);
    edit(&mut bundle["parameters"]);
    std::fs::write(path, soma_sign::jcs::canonicalize(&bundle).unwrap()).unwrap();
}

/// Attests `bundle` with `key` and imports it through the edge as the
/// drill's tenant (`soma capsule import`, catalogue `catalogue`): the exit
/// code, and the output (the submission, or the refusal).
fn import(data: &Path, work: &Path, bundle: &Path, key: &Path, catalogue: &str) -> (Option<i32>, String) {
    let envelope = work.join(format!(
        "{}.attestation.json",
        bundle.file_name().unwrap().to_str().unwrap()
    ));
    ok(&soma(
        &[
            "capsule",
            "attest",
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--out",
            envelope.to_str().unwrap(),
        ],
        work,
    ));
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let token = ok(&soma(
        &[
            "token",
            "--data-dir",
            data.to_str().unwrap(),
            "--tenant",
            "drill",
            "--region",
            "local",
            "--subject",
            "ops@drill",
            "--scope",
            "capsules:submit capsules:read",
        ],
        work,
    ))
    .trim()
    .to_owned();
    let output = soma(
        &[
            "capsule",
            "import",
            "--edge",
            endpoints["edge"].as_str().unwrap(),
            "--token",
            &token,
            "--template",
            "dr_failover_drill",
            "--catalogue",
            catalogue,
            "--bundle",
            bundle.to_str().unwrap(),
            "--envelope",
            envelope.to_str().unwrap(),
        ],
        work,
    );
    (
        output.status.code(),
        format!("{}{}", text(&output.stdout), text(&output.stderr)),
    )
}

/// The submission id of an import's output (the submission's JSON).
fn submission_id(output: &str) -> String {
    let submission: Value = serde_json::from_str(output.trim()).unwrap();
    assert_eq!(submission["state"], "SUBMISSION_STATE_PENDING", "{submission}");
    assert_eq!(submission["submitter"], "ops@drill", "{submission}");
    assert_eq!(submission["publisher"], "catalogue:ops", "{submission}");
    submission["submissionId"].as_str().unwrap().to_owned()
}

/// Runs the sections of the drill plan runbook whose blocks `which` selects
/// (the first block, the variables, always) with `submission` reviewed by
/// carol@drill in `environment`; its standard output.
async fn runbook(data: &Path, submission: &str, environment: &str, which: fn(usize) -> bool) -> String {
    let (data, submission, environment) = (
        data.to_str().unwrap().to_owned(),
        submission.to_owned(),
        environment.to_owned(),
    );
    let output = tokio::task::spawn_blocking(move || {
        common::runbooks::run_blocks(
            "drill-plan.md",
            &[
                ("SOMA_DATA", data.as_str()),
                ("REGION", "local"),
                ("SUBMISSION", submission.as_str()),
                ("REVIEWER", "carol@drill"),
                ("ENVIRONMENT", environment.as_str()),
                ("RUST_LOG", "warn"),
            ],
            |i| i == 0 || which(i),
        )
    })
    .await
    .unwrap();
    common::runbooks::assert_ran("drill-plan.md", &output);
    text(&output.stdout)
}

/// The runbook's blocks: 0 variables; 1 read the plan; 2 approve; 3
/// install; 4 the dry run; 5 roll back (and its dry run); 6 the history.
fn review_and_install(i: usize) -> bool {
    (1..=4).contains(&i)
}

fn review_and_install_only(i: usize) -> bool {
    (1..=3).contains(&i)
}

fn roll_back(i: usize) -> bool {
    i >= 5
}

/// The dry run's line of an output.
fn dry_run_line(output: &str) -> &str {
    output
        .lines()
        .rfind(|l| l.starts_with("plan="))
        .unwrap_or_else(|| panic!("no dry run line: {output}"))
}

/// The drill's event id from its progress line `recorded drill-… in Analytics`.
fn recorded_drill(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("drill: recorded "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no recorded drill: {stderr}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_follows_the_reviewed_and_installed_plan_capsule_and_its_rollback() {
    let _one_at_a_time = common::ha::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let ha = work.join("ha");
    let stack = Stack::up(ha.clone());
    let data = work.join("data");
    // The region's objective is generous: the plan's own target holds the
    // drill to 15 s, and what Analytics stores is the stricter of the two.
    let mut up = common::spawn_soma_up(
        &data,
        &["--database-url", &stack.url, "--drill-rto-objective", "60s"],
    );
    wait_for_edge(&data).await;
    let (data_arg, ha_arg) = (data.to_str().unwrap().to_owned(), ha.to_str().unwrap().to_owned());
    let drill = |extra: &[&str]| {
        let mut args = vec![
            "drill",
            "run",
            "--data-dir",
            &data_arg,
            "--ha-dir",
            &ha_arg,
            "--target",
            "postgres",
            "--capsule",
            "dr_failover_drill",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            soma_async(&args).await
        }
    };
    // Nothing killed: the same leader as before a refused drill, its
    // postmaster the same process.
    let primary = || async {
        let leader = stack.leader().await;
        let postmaster = stack.postmaster(&leader);
        (leader, postmaster)
    };

    // Not installed yet: refused with the reason, exit 3, nothing killed.
    let before = primary().await;
    let (code, stdout, stderr) = drill(&["--environment", "production"]).await;
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("HTTP 404 capsule_not_installed"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert_eq!(primary().await, before, "a refused drill killed the primary");

    // The import: the plan tool's release published, the bundle imported
    // with the ops catalogue key, the submission id and the next commands
    // printed.
    let output = tokio::process::Command::new(script("schedule_dr_drill.sh"))
        .args(["import", "--data-dir", &data_arg, "--database-url", &stack.url])
        .env("SOMA", SOMA)
        .env_remove("DATABASE_URL")
        .env(
            "PATH",
            format!(
                "{}:{}",
                Path::new(SOMA).parent().unwrap().display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("release drill-plan 1.0.0: published"), "{stderr}");
    assert!(stdout.contains("REVIEW_DECISION_APPROVE"), "{stdout}");
    assert!(stdout.contains("--capsule dr_failover_drill"), "{stdout}");
    let first = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submission_id="))
        .unwrap()
        .to_owned();

    // Reviewed by a second person with a second factor, installed: revision 1.
    let output = runbook(&data, &first, "production", review_and_install).await;
    assert!(
        output.contains("SUBMISSION_STATE_IN_REVIEW -> SUBMISSION_STATE_APPROVED by carol@drill"),
        "{output}"
    );
    assert!(
        output.contains("installed dr_failover_drill 1.0.0 in production: revision 1"),
        "{output}"
    );
    let line = dry_run_line(&output);
    assert!(
        line.starts_with(
            "plan=\"dr_failover_drill v1\" source=\"capsule dr_failover_drill (production, run "
        ),
        "{line}"
    );
    assert!(line.contains(" rto_target=15s rpo_target=0 writers=4 before=40 after=40 timeout=2m ledger=true services=gateway,tool-registry,capsule-repo,analytics"), "{line}");

    // A scheduled dry run, scheduled while revision 1 is installed: it runs
    // after revision 2 is (below), and must follow that one.
    ok(&soma(
        &[
            "drill",
            "schedule",
            "--data-dir",
            &data_arg,
            "--every",
            "1h",
            "--id",
            "plan-check",
            "--target",
            "postgres",
            "--ha-dir",
            &ha_arg,
            "--capsule",
            "dr_failover_drill",
            "--environment",
            "production",
            "--dry-run",
        ],
        work,
    ));

    // The drill from the installed plan: passes, its record carries the
    // plan's target and names the capsule's run.
    // (On a machine other builds load, a failover can take longer than
    // the plan's 15 s: a drill that failed on that target alone, and on
    // nothing else, is run once more; it must pass then.)
    let mut attempts = 0;
    let stderr = loop {
        attempts += 1;
        stack.wait_for_sync_standby().await;
        let (code, stdout, stderr) = drill(&["--environment", "production"]).await;
        if code == Some(0) {
            break stderr;
        }
        let slow = stderr.lines().any(|l| {
            l.contains("failed against its objectives [\"rto ")
                && l.ends_with("exceeds the drill's target 15s\"]")
        });
        assert!(slow && attempts < 2, "exit {code:?}: {stdout}{stderr}");
        eprintln!("drill attempt {attempts} slower than the plan's 15 s: {stdout}");
    };
    assert!(
        stderr.contains("plan dr_failover_drill v1 from capsule dr_failover_drill (production, run "),
        "{stderr}"
    );
    let passed = recorded_drill(&stderr);
    let analytics = soma_store::Database::connect(
        &soma_store::StoreSettings {
            data_dir: work.join("unused"),
            database_url: Some(stack.service_url("analytics")),
        },
        "analytics",
    )
    .await
    .unwrap();
    let stored = |event: String| {
        let analytics = analytics.clone();
        async move {
            soma_store::on_pool!(analytics, pool => {
                use sqlx::Row as _;
                let row = sqlx::query(
                    "SELECT objective_rto_nanos, passed, steps, failure_reasons FROM disaster_drills WHERE tenant = 'drill' AND event_id = $1",
                )
                .bind(&event)
                .fetch_one(pool)
                .await
                .unwrap();
                (
                    row.get::<Option<i64>, _>(0),
                    row.get::<bool, _>(1),
                    row.get::<String, _>(2),
                    row.get::<String, _>(3),
                )
            })
        }
    };
    let (objective, ok_, steps, reasons) = stored(passed.clone()).await;
    assert!(ok_, "{reasons}");
    assert_eq!(
        objective,
        Some(15_000_000_000),
        "the plan's 15 s target, stricter than the region's 60 s"
    );
    assert!(
        steps.contains("(plan dr_failover_drill v1 from capsule dr_failover_drill (production, run "),
        "{steps}"
    );

    // Revision 2: a plan whose RTO target no stack can hold, imported with
    // the ops key, reviewed and installed through the same runbook.
    let ops_key = data.join("secrets/ops-catalogue.key");
    let strict = work.join("strict.capsule.json");
    bundle_variant(&strict, "1.0.1", |plan| plan["targets"]["rto"] = json!("1ms"));
    let (code, output) = import(&data, work, &strict, &ops_key, "ops");
    assert_eq!(code, Some(0), "{output}");
    let second = submission_id(&output);
    let output = runbook(&data, &second, "production", review_and_install).await;
    assert!(
        output.contains("installed dr_failover_drill 1.0.1 in production: revision 2"),
        "{output}"
    );
    assert!(dry_run_line(&output).contains(" rto_target=1ms "), "{output}");

    // The drill scheduled under revision 1 resolves revision 2 when it runs.
    let (code, stdout, stderr) = soma_async(&["drill", "scheduler", "--data-dir", &data_arg, "--once"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let list = ok(&soma(
        &["drill", "schedule", "--data-dir", &data_arg, "--list"],
        work,
    ));
    assert!(
        list.contains("plan-check") && list.contains("exit 0") && list.contains(" rto_target=1ms "),
        "{list}"
    );

    // The next drill is held to 1 ms: it fails, on that target.
    stack.wait_for_sync_standby().await;
    let (code, stdout, stderr) = drill(&["--environment", "production"]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("rto target 1ms"), "{stderr}");
    assert!(stderr.contains("targets: rto <= 0.001s missed"), "{stderr}");
    let failed = recorded_drill(&stderr);
    let (objective, ok_, _, reasons) = stored(failed).await;
    assert!(!ok_);
    assert_eq!(objective, Some(1_000_000), "{reasons}");
    assert!(reasons.contains("exceeds the drill's target 0.001s"), "{reasons}");

    // Rolled back through the runbook: revision 3, revision 1's plan again.
    let output = runbook(&data, &second, "production", roll_back).await;
    assert!(output.contains("rolled back to 1.0.0: revision 3"), "{output}");
    let line = dry_run_line(&output);
    assert!(line.contains(" rto_target=15s "), "{line}");
    assert!(
        output.contains("revision 3 rollback INSTALLATION_STATUS_INSTALLED 1.0.0"),
        "{output}"
    );

    // A capsule whose plan fails the checks (installed in staging):
    // refused naming the field, nothing killed.
    let broken = work.join("broken.capsule.json");
    bundle_variant(&broken, "1.0.2", |plan| {
        plan["steps"] = json!(["load", "kill", "recovery", "ledger", "services"]);
    });
    let (code, output) = import(&data, work, &broken, &ops_key, "ops");
    assert_eq!(code, Some(0), "{output}");
    let third = submission_id(&output);
    let output = runbook(&data, &third, "staging", review_and_install_only).await;
    assert!(
        output.contains("installed dr_failover_drill 1.0.2 in staging: revision 1"),
        "{output}"
    );
    let before = primary().await;
    let (code, stdout, stderr) = drill(&["--environment", "staging"]).await;
    assert_eq!(code, Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains("--capsule dr_failover_drill (environment staging): steps: \"rpo\" is missing"),
        "{stderr}"
    );
    assert_eq!(primary().await, before, "a refused drill killed the primary");

    // The plan tool's release revoked: refused (409), nothing killed.
    let revoker = ok(&soma(
        &[
            "token",
            "--data-dir",
            &data_arg,
            "--tenant",
            "drill",
            "--region",
            "local",
            "--subject",
            "ops@drill",
            "--scope",
            "tools:revoke",
            "--mfa",
        ],
        work,
    ))
    .trim()
    .to_owned();
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let r = common::edge::send(
        &common::edge::client(),
        "POST",
        &format!(
            "{}/v1/tools/drill-plan/releases/1.0.0:revoke",
            endpoints["edge"].as_str().unwrap()
        ),
        Some(&revoker),
        Some(&json!({"reason": "drill test"}).to_string()),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let before = primary().await;
    let (code, stdout, stderr) = drill(&["--environment", "production"]).await;
    assert_eq!(code, Some(4), "{stdout}{stderr}");
    assert!(stderr.contains("HTTP 409 release_revoked"), "{stderr}");
    assert_eq!(primary().await, before, "a refused drill killed the primary");

    analytics.close().await;
    let _ = up.start_kill();
    let _ = up.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_sources_exclude_each_other_and_an_operators_catalogues_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let data = work.join("data");
    let plan = script("dr_failover_drill.plan.json");
    let plan_arg = plan.to_str().unwrap();

    // Both sources, or an environment without a capsule: usage errors,
    // for a drill and for a schedule.
    struct Case {
        name: &'static str,
        args: Vec<&'static str>,
        expected: &'static str,
    }
    let both = ["--plan", "PLAN", "--capsule", "dr_failover_drill"];
    let cases = [
        Case {
            name: "a drill with both",
            args: ["drill", "run", "--target", "postgres"]
                .into_iter()
                .chain(both)
                .collect(),
            expected: "--plan and --capsule exclude each other",
        },
        Case {
            name: "a schedule with both",
            args: ["drill", "schedule", "--every", "1h", "--target", "postgres"]
                .into_iter()
                .chain(both)
                .collect(),
            expected: "--plan and --capsule exclude each other",
        },
        Case {
            name: "an environment without a capsule",
            args: vec!["drill", "run", "--target", "postgres", "--environment", "staging"],
            expected: "--environment is the installed capsule's",
        },
        Case {
            name: "a capsule name that is not one",
            args: vec!["drill", "run", "--target", "postgres", "--capsule", "../x"],
            expected: "--capsule \"../x\": 1 to 64 of [a-z0-9._-]",
        },
    ];
    let data_arg = data.to_str().unwrap();
    for case in cases {
        // `soma drill SUBCOMMAND --data-dir DIR …` (a schedule's drill
        // arguments come last).
        let mut args: Vec<&str> = case.args[..2].to_vec();
        args.extend(["--data-dir", data_arg]);
        args.extend(
            case.args[2..]
                .iter()
                .map(|a| if *a == "PLAN" { plan_arg } else { a }),
        );
        let output = soma(&args, work);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{}: {stderr}", case.name);
        assert!(stderr.contains(case.expected), "{}: {stderr}", case.name);
    }
    assert!(
        !data.join("drills/schedule.json").exists(),
        "a refused schedule was written"
    );

    // The operator pinned their own catalogue: soma up keeps it, and adds
    // no `ops` of its own (its key is still created, unpinned).
    let (operator_key, _) =
        soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("mao").unwrap()).unwrap();
    let catalogues = work.join("catalogues.json");
    std::fs::write(
        &catalogues,
        json!({"catalogues": [{"name": "mao", "threshold": 1, "public_keys_pem": [operator_key.public_key_pem()]}]})
            .to_string(),
    )
    .unwrap();
    let mut up = common::soma_up_command(&data)
        .env("RUST_LOG", "warn")
        .env("SOMA_CAPSULE_REPO_CATALOGUES_FILE", &catalogues)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_edge(&data).await;
    let ops_key = data.join("secrets/ops-catalogue.key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&ops_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the ops catalogue key is the operator's secret");
    }

    // The plan tool's release is what the bundle pins; publish it so that
    // only the attestation decides.
    ok(&soma(&["release", "keygen", "--out", "pub"], work));
    ok(&soma(
        &[
            "release",
            "publisher",
            "add",
            "--data-dir",
            data_arg,
            "--name",
            "ops",
            "--public-key",
            "pub/publisher.pub",
        ],
        work,
    ));
    std::fs::write(work.join("echo.wat"), soma_sandbox::adapter_wat("echo").unwrap()).unwrap();
    ok(&soma(
        &[
            "release",
            "sign",
            "--key",
            "pub/publisher.key",
            "--manifest",
            script("drill-plan.manifest.json").to_str().unwrap(),
            "--module",
            "echo.wat",
            "--out",
            "release.json",
        ],
        work,
    ));
    let publisher = ok(&soma(
        &[
            "token",
            "--data-dir",
            data_arg,
            "--tenant",
            "drill",
            "--region",
            "local",
            "--scope",
            "tools:publish",
            "--mfa",
        ],
        work,
    ));
    ok(&soma(
        &[
            "release",
            "publish",
            "--data-dir",
            data_arg,
            "--envelope",
            "release.json",
            "--module",
            "echo.wat",
            "--token",
            publisher.trim(),
        ],
        work,
    ));

    let bundle = script("dr_failover_drill.capsule.json");
    // soma up's own ops key: no such catalogue here.
    let (code, output) = import(&data, work, &bundle, &ops_key, "ops");
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("HTTP 403: catalogue_unknown"), "{output}");
    // The operator's catalogue, signed by another key: refused.
    let (code, output) = import(&data, work, &bundle, &work.join("pub/publisher.key"), "mao");
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("attestation_key_unknown"), "{output}");
    // Nothing written.
    let reader = ok(&soma(
        &[
            "token",
            "--data-dir",
            data_arg,
            "--tenant",
            "drill",
            "--region",
            "local",
            "--scope",
            "capsules:read",
        ],
        work,
    ));
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let r = common::edge::send(
        &common::edge::client(),
        "GET",
        &format!("{}/v1/submissions", endpoints["edge"].as_str().unwrap()),
        Some(reader.trim()),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(
        r.json()["submissions"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        r.json()
    );

    let _ = up.start_kill();
    let _ = up.wait().await;
}
