//! What the `soma` binary's tests build beyond `soma-testing`: the real
//! backends the edge's tests compose the gateway with, started in-process,
//! the edge itself (`edge`), `soma up` as a child process, and the HA stack
//! with a write load through the edge (`ha`).
//!
//! Analytics' and the tool registry's builders are their own tests'
//! (`services/*/tests/common`), included here as `analytics` and `registry`
//! rather than copied; what every crate's tests share is `soma-testing`.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these builders"
)]

#[path = "../../../../services/analytics/tests/common/mod.rs"]
pub mod analytics;
pub mod cli;
pub mod edge;
pub mod ha;
#[path = "../../../../services/tool-registry/tests/common/mod.rs"]
pub mod registry;
pub mod runbooks;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use soma_mesh::ServiceKind;
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, Running};

/// Starts the real backend `kind`, the tool registry or capsule-repo (the
/// gateway starts with its edge, [`edge::start_edge`], and Analytics with
/// its keys, [`analytics::start_analytics`]), with identity `/svc/<kind>`
/// from `ca`, on the database `db` (one engine's, from
/// `soma_testing::Stores::of`), with `claims` as its envelope verifier.
pub async fn start(
    ca: &Ca,
    kind: ServiceKind,
    claims: Option<soma_auth::ClaimsVerifier>,
    db: &StoreSettings,
) -> Running {
    let store = ca.store(&kind.spiffe_path(), Duration::from_secs(3600));
    let settings = soma_testing::settings(kind, &[]);
    let db = Database::connect(db, kind.name()).await.unwrap();
    let spec = match kind {
        ServiceKind::ToolRegistry => {
            db.migrate(&soma_tool_registry::MIGRATIONS).await.unwrap();
            let (keys, _) = soma_sign::HmacKeyring::generate("registry-1").unwrap();
            let config = soma_tool_registry::RegistryConfig {
                keys,
                keys_path: std::path::PathBuf::new(),
                price: soma_tool_registry::Price::default(),
                max_module_bytes: soma_tool_registry::config::DEFAULT_MAX_MODULE_BYTES,
            };
            let registry =
                soma_tool_registry::Registry::new(db.clone(), config, soma_sandbox::SandboxConfig::default())
                    .unwrap();
            soma_tool_registry::spec(db, registry, &settings.limits)
        }
        ServiceKind::CapsuleRepo => {
            db.migrate(&soma_capsule_repo::MIGRATIONS).await.unwrap();
            let (keys, _) = soma_sign::HmacKeyring::generate("capsule-repo-1").unwrap();
            let config = soma_capsule_repo::CapsuleRepoConfig {
                keys,
                keys_path: std::path::PathBuf::new(),
                catalogues: Vec::new(),
            };
            let repo = soma_capsule_repo::Repo::new(db.clone(), config, None);
            soma_capsule_repo::spec(db, repo, &settings.limits)
        }
        ServiceKind::Gateway | ServiceKind::Analytics => {
            panic!("{kind}: started by common::edge::start_edge or common::analytics::start_analytics")
        }
    };
    soma_testing::serve(settings, store, claims, spec).await
}

/// `soma up` on `data_dir` with its edge on a free loopback port, no
/// inherited gateway configuration, stdin closed and killed if dropped:
/// callers add their arguments, log level and output handling.
pub fn soma_up_command(data_dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"));
    command
        .args(["up", "--edge-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED")
        .env_remove("SOMA_GATEWAY_CONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// `soma up` on `data_dir` ([`soma_up_command`]) with `extra` arguments,
/// logging warnings only.
pub fn spawn_soma_up(data_dir: &std::path::Path, extra: &[&str]) -> tokio::process::Child {
    soma_up_command(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Sends signal `name` (`TERM`, `KILL`, `STOP`, `CONT`…) to `pid`.
pub fn signal(name: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// The children of `parent` that run `soma serve <service>`, by service.
pub fn services_of(parent: u32) -> BTreeMap<String, u32> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let mut fields = after.split(' ');
        let state = fields.next().unwrap();
        let ppid: u32 = fields.next().unwrap().parse().unwrap();
        if ppid != parent || state == "Z" {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) == Some("serve") {
            found.insert(args[2].clone(), pid);
        }
    }
    found
}
