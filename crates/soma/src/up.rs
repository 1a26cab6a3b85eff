//! `soma up`: the development authority and the four services, each a
//! child process `soma serve <service>` on its own loopback port, with its
//! SVID from the authority's Workload API (the same path as with a SPIRE
//! agent). Children are attested by their process id.
//!
//! With `--analytics-standby` (PostgreSQL only) a second Analytics,
//! `analytics-2`, runs on its own ports against the same database: the
//! instance holding the ledger writer's lease writes, the other stands by
//! and takes over when it dies, and every client of Analytics is given both
//! addresses (`SOMA_PEER_ANALYTICS=a,b`), sending to the one that serves.
//!
//! Supervision: a child that exits (a crash, a signal, even a clean exit
//! nobody asked for) is restarted on the same addresses and the same data,
//! after a backoff that doubles from 100 ms to 5 s and resets once a child
//! has stayed up for a while; each restart is announced on standard output
//! (a restarted Analytics stands by if the other took over meanwhile).
//! A child's pid is withdrawn from the attestation table on every path on
//! which that child ends, before the kernel may hand the pid to anyone else.
//! `DIR/pids.json` names each instance's current pid (rewritten at every
//! restart), for tools that signal one (`soma drill run`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use soma_auth::ClaimsSigner;
use soma_ca::{Authority, AuthorityOptions, Registry, WorkloadApi, WorkloadApiConfig};
use soma_identity::{SpiffeId, TrustDomain};
use soma_mesh::ServiceKind;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::serve::ReadyLine;

mod drills;

pub use drills::DrillSettings;

/// How long one service may take to report that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the services get to stop after their stdin closes.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The first delay before restarting a child that exited.
const MIN_RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// The first delay before restarting an Analytics that has a standby
/// beside it (which polls the writer's lease every 200 ms).
const ANALYTICS_RESTART_BESIDE_STANDBY: Duration = Duration::from_secs(2);
/// The longest delay between restarts of a child that keeps exiting.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(5);
/// A child up this long has recovered: its next restart waits the minimum again.
const STABLE_UPTIME: Duration = Duration::from_secs(10);

pub struct UpArgs {
    pub data_dir: PathBuf,
    pub trust_domain: String,
    pub svid_ttl: Duration,
    pub ca_ttl: Duration,
    pub log_format: crate::LogFormat,
    pub edge_addr: SocketAddr,
    pub region: String,
    /// A PostgreSQL server for the services' databases (`soma_<service>`
    /// each); `None`: SQLite files under the data dir.
    pub database_url: Option<String>,
    /// Analytics' drill objectives for the region and webhook receivers.
    pub drills: DrillSettings,
    /// Run a second Analytics as a standby (PostgreSQL only).
    pub analytics_standby: bool,
}

/// The name of the standby Analytics instance `soma up` runs with
/// `--analytics-standby` (its log, its admin address in endpoints.json, its
/// pid in pids.json).
pub(crate) const ANALYTICS_STANDBY: &str = "analytics-2";

/// The database of `kind` on a PostgreSQL server: `soma_<service>`, the
/// service's name with `_` for `-`.
fn database_name(kind: ServiceKind) -> String {
    format!("soma_{}", kind.name().replace('-', "_"))
}

/// `DIR/endpoints.json`.
#[derive(Debug, serde::Serialize)]
struct Endpoints {
    trust_domain: String,
    workload_api_socket: PathBuf,
    gateway: String,
    tool_registry: String,
    capsule_repo: String,
    /// The first Analytics instance.
    analytics: String,
    /// Every Analytics instance, in start order (with a standby, two: the
    /// addresses every client of Analytics is given).
    analytics_instances: Vec<String>,
    /// The gateway's HTTP/JSON + gRPC edge (`http://host:port`).
    edge: Option<String>,
    /// Each instance's admin listener (`host:port`: `/metrics`, `/healthz`,
    /// `/readyz`), by instance name (the service's name; `analytics-2` for
    /// the standby Analytics): what a Prometheus scrapes.
    admin: BTreeMap<String, String>,
}

struct Running {
    kind: ServiceKind,
    /// The instance's name: the service's, or [`ANALYTICS_STANDBY`].
    instance: String,
    child: Child,
    /// The child's pid in the attestation table, from spawn time on: once
    /// the child is reaped `Child::id` is `None`, and the entry must still
    /// be withdrawn.
    registration: Registration,
    /// The child's stdin, held apart from `child`: `Child::wait` closes the
    /// stdin it holds, and a closed stdin is the child's stop signal.
    stdin: Option<tokio::process::ChildStdin>,
    ready: ReadyLine,
    /// The peer addresses it was started with (a restart gets the same).
    peers: BTreeMap<&'static str, String>,
    /// When this process reported that it listens.
    since: Instant,
    /// The delay before its next restart.
    backoff: Duration,
}

/// A child's pid entitled to its SPIFFE ID in the Workload API's registry.
/// Withdrawn explicitly right after the child is reaped, and otherwise when
/// dropped (a start that failed or was abandoned at shutdown): a process
/// that later gets the same pid must get no identity.
struct Registration {
    registry: Registry,
    pid: u32,
    withdrawn: bool,
}

impl Registration {
    fn new(registry: &Registry, pid: u32, id: SpiffeId) -> Self {
        registry.register_pid(pid, id);
        Self {
            registry: registry.clone(),
            pid,
            withdrawn: false,
        }
    }

    /// Removes the entry, once: a later drop must not remove the entry of a
    /// new child that happens to get the same pid.
    fn withdraw(&mut self) {
        if !self.withdrawn {
            self.registry.unregister_pid(self.pid);
            self.withdrawn = true;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// What every start of a service needs, fixed for the whole `soma up`.
struct Launch<'a> {
    log_format: crate::LogFormat,
    trust_domain: &'a TrustDomain,
    data_dir: &'a Path,
    socket: &'a Path,
    keys: ServiceKeys<'a>,
    registry: &'a Registry,
    /// Each service's PostgreSQL URL, by service name; empty: SQLite.
    databases: &'a BTreeMap<&'static str, String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = soma_gateway::Region::parse(&args.region) {
        return Ok(crate::config_error(format_args!("--region: {e}")));
    }
    if args.analytics_standby && args.database_url.is_none() {
        return Ok(crate::config_error(
            "--analytics-standby needs --database-url: on SQLite one Analytics is always the ledger's writer",
        ));
    }
    let trust_domain = match TrustDomain::parse(&args.trust_domain) {
        Ok(td) => td,
        Err(e) => {
            return Ok(crate::config_error(format_args!(
                "--trust-domain {:?}: {e}",
                args.trust_domain
            )));
        }
    };
    // Each service's database on the server, created when missing, before
    // anything starts: a server that cannot be reached fails here, with its
    // cause.
    let mut databases: BTreeMap<&'static str, String> = BTreeMap::new();
    if let Some(url) = &args.database_url {
        for kind in ServiceKind::ALL {
            let name = database_name(kind);
            match soma_store::ensure_postgres_database(url, &name).await {
                Ok(service_url) => {
                    databases.insert(kind.name(), service_url);
                }
                Err(e @ soma_store::StoreError::InvalidDatabaseUrl { .. }) => {
                    return Ok(crate::config_error(format_args!("--database-url: {e}")));
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("--database-url: preparing the database {name}")));
                }
            }
        }
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    // Held until `soma up` returns: everything below (first-start keys,
    // the authority, the services' files) belongs to this one instance.
    let _data_dir_lock = lock_data_dir(&data_dir)?;
    let socket = data_dir.join("workload.sock");

    let authority = Arc::new(
        Authority::open_or_create_with(&data_dir, &trust_domain, AuthorityOptions { ca_ttl: args.ca_ttl })
            .with_context(|| format!("opening the authority under {}", data_dir.display()))?,
    );
    let (claims_key, claims_pub) = ensure_claims_key(&data_dir)?;
    let gateway_config = ensure_gateway_config(&data_dir, &args)?;
    let analytics_keys = ensure_analytics_keys(&data_dir)?;
    let registry_keys = ensure_registry_keys(&data_dir)?;
    let capsule_repo_keys = ensure_capsule_repo_keys(&data_dir)?;
    let ops_catalogue = ensure_ops_catalogue(&data_dir)?;
    let analytics_drills = match drills::analytics_env(&data_dir, &args.region, &args.drills)? {
        Ok(env) => env,
        Err(reason) => return Ok(crate::config_error(reason)),
    };

    let registry = Registry::new();
    let listener = soma_ca::bind_socket(&socket)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = WorkloadApi::new(
        Arc::clone(&authority),
        registry.clone(),
        WorkloadApiConfig {
            svid_ttl: args.svid_ttl,
        },
    );
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(api.serve(listener, async move {
        let _ = api_stop.wait_for(|s| *s).await;
    }));

    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let launch = Launch {
        log_format: args.log_format,
        trust_domain: &trust_domain,
        data_dir: &data_dir,
        socket: &socket,
        keys: ServiceKeys {
            claims_key: &claims_key,
            claims_pub: &claims_pub,
            analytics: &analytics_keys,
            registry: &registry_keys,
            capsule_repo: &capsule_repo_keys,
            capsule_repo_catalogues: &ops_catalogue,
            gateway_config: &gateway_config,
            region: &args.region,
            analytics_drills: &analytics_drills,
        },
        registry: &registry,
        databases: &databases,
    };
    let mut running: Vec<Running> = Vec::new();
    let mut peers: BTreeMap<&'static str, String> = BTreeMap::new();
    // The gateway last: it needs every other service's address. The first
    // Analytics before its standby, so that it takes the lease first.
    let mut order = vec![(ServiceKind::Analytics, ServiceKind::Analytics.name())];
    if args.analytics_standby {
        order.push((ServiceKind::Analytics, ANALYTICS_STANDBY));
    }
    order.extend(
        [
            ServiceKind::ToolRegistry,
            ServiceKind::CapsuleRepo,
            ServiceKind::Gateway,
        ]
        .map(|kind| (kind, kind.name())),
    );
    for (kind, instance) in order {
        match start_service(kind, instance, &launch, &peers, None).await {
            Ok(r) => {
                // Every instance of a service: its clients get them all.
                peers
                    .entry(peer_var(kind))
                    .and_modify(|addrs| {
                        addrs.push(',');
                        addrs.push_str(&r.ready.grpc_addr);
                    })
                    .or_insert_with(|| r.ready.grpc_addr.clone());
                running.push(r);
            }
            Err(e) => {
                stop_all(&mut running).await;
                let _ = stop_tx.send(true);
                let _ = api_task.await;
                return Err(e.context(format!(
                    "starting {instance} (log: {})",
                    logs.join(format!("{instance}.log")).display()
                )));
            }
        }
    }

    let addr_of = |k: ServiceKind| {
        running
            .iter()
            .find(|r| r.kind == k)
            .map(|r| r.ready.grpc_addr.clone())
            .unwrap_or_default()
    };
    let endpoints = Endpoints {
        trust_domain: trust_domain.to_string(),
        workload_api_socket: socket.clone(),
        gateway: addr_of(ServiceKind::Gateway),
        tool_registry: addr_of(ServiceKind::ToolRegistry),
        capsule_repo: addr_of(ServiceKind::CapsuleRepo),
        analytics: addr_of(ServiceKind::Analytics),
        analytics_instances: running
            .iter()
            .filter(|r| r.kind == ServiceKind::Analytics)
            .map(|r| r.ready.grpc_addr.clone())
            .collect(),
        edge: running
            .iter()
            .find_map(|r| r.ready.edge_addr.as_ref())
            .map(|a| format!("http://{a}")),
        admin: running
            .iter()
            .map(|r| (r.instance.clone(), r.ready.admin_addr.clone()))
            .collect(),
    };
    write_atomically(
        &data_dir.join("endpoints.json"),
        &serde_json::to_vec_pretty(&endpoints)?,
    )?;
    write_pids(&data_dir, &running)?;

    #[expect(clippy::print_stdout, reason = "the command's output")]
    {
        println!(
            "somastack up: trust domain {trust_domain}, Workload API unix://{}",
            socket.display()
        );
        for r in &running {
            println!(
                "  {:<14} {:<44} grpc+mtls {:<21} admin http://{}",
                r.instance, r.ready.spiffe_id, r.ready.grpc_addr, r.ready.admin_addr
            );
        }
        if let Some(edge) = &endpoints.edge {
            println!("  edge           {edge}  (HTTP/JSON and gRPC, bearer tokens; {edge}/openapi.json)");
            println!("Try it:");
            let soma =
                std::env::current_exe().map_or_else(|_| "soma".to_owned(), |p| p.display().to_string());
            println!(
                "  curl -H \"authorization: Bearer $({soma} token --data-dir {} --tenant demo --region {} --scope identity:read)\" {edge}/v1/whoami",
                data_dir.display(),
                args.region
            );
        }
        println!("  endpoints      {}", data_dir.join("endpoints.json").display());
        println!("  logs           {}", logs.display());
        println!("Ctrl-C to stop.");
    }

    // Run until a stop signal, restarting every service that exits.
    let mut stop = std::pin::pin!(crate::stop_signal());
    'supervise: loop {
        let (index, status) = tokio::select! {
            () = &mut stop => break 'supervise,
            exited = first_exit(&mut running) => exited,
        };
        let with_standby = running
            .iter()
            .filter(|c| c.kind == ServiceKind::Analytics)
            .count()
            > 1;
        let r = &mut running[index];
        // Reaped just now: the pid is free for the kernel to reuse.
        r.registration.withdraw();
        let instance = r.instance.clone();
        let uptime = r.since.elapsed();
        if uptime >= STABLE_UPTIME {
            r.backoff = MIN_RESTART_BACKOFF;
        }
        // An Analytics beside a standby comes back after the standby had
        // its turn at the writer's lease: the instance that was waiting
        // takes over, and the restarted one waits in its place.
        if with_standby && r.kind == ServiceKind::Analytics {
            r.backoff = r.backoff.max(ANALYTICS_RESTART_BESIDE_STANDBY);
        }
        let status = status.map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string());
        say(format_args!(
            "  {:<14} exited ({status}) after {}; restarting in {}",
            instance,
            humantime::format_duration(round_ms(uptime)),
            humantime::format_duration(r.backoff)
        ));
        tracing::warn!(service = %instance, %status, "service exited; restarting it");
        let restarted = tokio::select! {
            // Dropping an unfinished restart kills its child (kill_on_drop)
            // and withdraws its pid (Registration's drop).
            () = &mut stop => break 'supervise,
            restarted = restart(&launch, r) => restarted,
        };
        let r = &mut running[index];
        *r = restarted;
        say(format_args!(
            "  {:<14} restarted (pid {}), grpc+mtls {}",
            instance, r.registration.pid, r.ready.grpc_addr
        ));
        if let Err(e) = write_pids(&data_dir, &running) {
            tracing::warn!(error = %e, "pids.json not rewritten");
        }
    }
    stop_all(&mut running).await;
    let _ = stop_tx.send(true);
    let _ = api_task.await;
    Ok(ExitCode::SUCCESS)
}

/// Starts `old`'s service again on its addresses, after its backoff,
/// doubling the backoff after each failed attempt, until one listens.
async fn restart(launch: &Launch<'_>, old: &Running) -> Running {
    let mut backoff = old.backoff;
    loop {
        tokio::time::sleep(backoff).await;
        let next = (backoff * 2).min(MAX_RESTART_BACKOFF);
        match start_service(old.kind, &old.instance, launch, &old.peers, Some(&old.ready)).await {
            Ok(mut new) => {
                new.backoff = next;
                return new;
            }
            Err(e) => {
                say(format_args!(
                    "  {:<14} restart failed: {e:#}; retrying in {}",
                    old.instance,
                    humantime::format_duration(next)
                ));
                backoff = next;
            }
        }
    }
}

/// One line of `soma up`'s own output.
#[expect(clippy::print_stdout, reason = "the command's output")]
fn say(line: std::fmt::Arguments<'_>) {
    println!("{line}");
}

/// `DIR/pids.json`: each instance's current pid, by instance name.
fn write_pids(data_dir: &Path, running: &[Running]) -> anyhow::Result<()> {
    let pids: BTreeMap<&str, u32> = running
        .iter()
        .map(|r| (r.instance.as_str(), r.registration.pid))
        .collect();
    write_atomically(&data_dir.join("pids.json"), &serde_json::to_vec_pretty(&pids)?)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn peer_var(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Gateway => "SOMA_PEER_GATEWAY",
        ServiceKind::ToolRegistry => "SOMA_PEER_TOOL_REGISTRY",
        ServiceKind::CapsuleRepo => "SOMA_PEER_CAPSULE_REPO",
        ServiceKind::Analytics => "SOMA_PEER_ANALYTICS",
    }
}

/// The key files `soma up` hands its services.
struct ServiceKeys<'a> {
    claims_key: &'a Path,
    claims_pub: &'a Path,
    analytics: &'a AnalyticsKeys,
    registry: &'a Path,
    capsule_repo: &'a Path,
    /// The template catalogues file pinning the `ops` catalogue's key.
    capsule_repo_catalogues: &'a Path,
    gateway_config: &'a Path,
    region: &'a str,
    /// Analytics' drill objectives and webhook settings.
    analytics_drills: &'a [(&'static str, String)],
}

/// Spawns `soma serve <kind>` as `instance`, registers its pid for the
/// service's SPIFFE ID and waits for its ready line. `previous`: the ready
/// line of the process this one replaces, whose addresses it binds again
/// (its peers and endpoints.json keep naming them) and whose log it appends
/// to.
async fn start_service(
    kind: ServiceKind,
    instance: &str,
    launch: &Launch<'_>,
    peers: &BTreeMap<&'static str, String>,
    previous: Option<&ReadyLine>,
) -> anyhow::Result<Running> {
    let id = SpiffeId::from_parts(launch.trust_domain, &kind.spiffe_path())?;
    let keys = &launch.keys;
    let exe = std::env::current_exe().context("locating the soma binary")?;
    let log_path = launch.data_dir.join("logs").join(format!("{instance}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(previous.is_some())
        .truncate(previous.is_none())
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // Where this process's own lines begin in the log.
    let log_start = log.metadata().map_or(0, |m| m.len());
    let (service_addr, admin_addr) = match previous {
        Some(p) => (p.grpc_addr.as_str(), p.admin_addr.as_str()),
        None => ("127.0.0.1:0", "127.0.0.1:0"),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg(kind.name())
        .arg("--stop-on-stdin-eof")
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", launch.socket.display()),
        )
        .env("SOMA_DATA_DIR", launch.data_dir.join("db"))
        .env("SOMA_LOG_FORMAT", launch.log_format.as_str())
        .env("SOMA_SERVICE_ADDR", service_addr)
        .env("SOMA_ADMIN_ADDR", admin_addr)
        .env("SOMA_GATEWAY_CLAIMS_PUBLIC_KEY_FILE", keys.claims_pub)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(url) = launch.databases.get(kind.name()) {
        cmd.env("DATABASE_URL", url);
    }
    match kind {
        ServiceKind::Gateway => {
            cmd.env("SOMA_GATEWAY_CLAIMS_KEY_FILE", keys.claims_key)
                .env("SOMA_GATEWAY_REGION", keys.region);
            if std::env::var_os(soma_gateway::config::CONFIG_ENV).is_none() {
                cmd.env(soma_gateway::config::CONFIG_ENV, keys.gateway_config);
            }
            // The allow-list defaults to the gateway's own region.
            if std::env::var(soma_gateway::config::RESIDENCY_ENV).map_or(true, |v| v.is_empty()) {
                cmd.env(soma_gateway::config::RESIDENCY_ENV, keys.region);
            }
            // A restarted gateway serves the edge where tenants already call it.
            if let Some(edge) = previous.and_then(|p| p.edge_addr.as_deref()) {
                cmd.env(soma_gateway::config::EDGE_ADDR_ENV, edge);
            }
        }
        ServiceKind::Analytics => {
            cmd.env("SOMA_ANALYTICS_ROW_KEYS_FILE", &keys.analytics.row_keys)
                .env("SOMA_ANALYTICS_SIGNING_KEY_FILE", &keys.analytics.signing_key)
                .env("SOMA_ANALYTICS_SIGNING_KEY_ID", ANALYTICS_SIGNING_KEY_ID)
                .envs(keys.analytics_drills.iter().map(|(k, v)| (k, v)));
        }
        ServiceKind::ToolRegistry => {
            cmd.env(soma_tool_registry::config::KEYS_FILE_ENV, keys.registry);
        }
        ServiceKind::CapsuleRepo => {
            cmd.env(soma_capsule_repo::config::KEYS_FILE_ENV, keys.capsule_repo);
            // Catalogues an operator pinned are theirs: only without any
            // does the repository get `soma up`'s own `ops` catalogue.
            if std::env::var(soma_capsule_repo::config::CATALOGUES_FILE_ENV).map_or(true, |v| v.is_empty()) {
                cmd.env(
                    soma_capsule_repo::config::CATALOGUES_FILE_ENV,
                    keys.capsule_repo_catalogues,
                );
            }
        }
    }
    for (var, addr) in peers {
        cmd.env(var, addr);
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {instance}"))?;
    // Attestation: this pid, and only this pid, is the workload `id`. It is
    // registered before the child can ask for its SVID (it has not even
    // loaded its settings yet).
    let pid = child.id().context("the child has no pid")?;
    let registration = Registration::new(launch.registry, pid, id);

    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("the child has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) | Ok(Err(_)) => {
            // Reap it, so that its last words are in the log.
            let _ = child.wait().await;
            drop(registration);
            bail!(
                "{instance} exited before it listened: {}",
                last_error(&log_path, log_start)
            );
        }
        Err(_) => {
            drop(registration);
            let _ = child.kill().await;
            bail!("{instance} did not listen within {}s", START_TIMEOUT.as_secs());
        }
    };
    let ready: ReadyLine =
        serde_json::from_str(&line).with_context(|| format!("{instance} printed {line:?}"))?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Running {
        kind,
        instance: instance.to_owned(),
        child,
        registration,
        stdin,
        ready,
        peers: peers.clone(),
        since: Instant::now(),
        backoff: MIN_RESTART_BACKOFF,
    })
}

/// The last `soma: ...` line a child wrote to its log after `start`: the
/// reason `soma serve` gives when it exits with an error.
fn last_error(log: &Path, start: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let own = text
        .get(usize::try_from(start).unwrap_or(0)..)
        .unwrap_or_default();
    String::from_utf8_lossy(own)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("soma: "))
        .map_or_else(|| "it gave no reason".to_owned(), str::to_owned)
}

/// The first child to exit (reaped), by index, with its exit status.
async fn first_exit(running: &mut [Running]) -> (usize, std::io::Result<std::process::ExitStatus>) {
    let waits = running.iter_mut().map(|r| Box::pin(r.child.wait()));
    let (status, index, _) = futures::future::select_all(waits).await;
    (index, status)
}

/// Closes every child's stdin (they drain and exit), waits, then kills the
/// ones still running, and withdraws their attestation (a later process
/// reusing the pid gets no identity).
async fn stop_all(running: &mut [Running]) {
    for r in running.iter_mut() {
        drop(r.stdin.take());
    }
    for r in running.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, r.child.wait()).await {
            Ok(_) => tracing::info!(service = %r.instance, "stopped"),
            Err(_) => {
                tracing::warn!(service = %r.instance, "did not stop in time; killing it");
                let _ = r.child.kill().await;
            }
        }
        r.registration.withdraw();
    }
}

/// The gateway's Ed25519 claims key (PKCS#8 PEM, 0600) and its public key,
/// created once per data dir.
fn ensure_claims_key(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let secrets = data_dir.join("secrets");
    let key = secrets.join("gateway-claims.key");
    let public = secrets.join("gateway-claims.pub.pem");
    if key.exists() && public.exists() {
        return Ok((key, public));
    }
    std::fs::create_dir_all(&secrets)?;
    set_mode(&secrets, 0o700)?;
    let (signer, pkcs8) = ClaimsSigner::generate("gateway-1")?;
    write_atomically(&key, pem_block("PRIVATE KEY", &pkcs8).as_bytes())?;
    set_mode(&key, 0o600)?;
    write_atomically(&public, signer.public_key_pem().as_bytes())?;
    Ok((key, public))
}

/// The development issuers' keys (`DIR/secrets/dev-issuer.jwk` for tenant
/// tokens, `DIR/secrets/dev-operator-issuer.jwk` for operator tokens, each
/// created once) and the gateway's config naming them (`DIR/gateway.toml`,
/// rewritten at each start with this run's region and edge address).
fn ensure_gateway_config(data_dir: &Path, args: &UpArgs) -> anyhow::Result<PathBuf> {
    let secrets = data_dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    set_mode(&secrets, 0o700)?;
    let jwk = crate::token::dev_issuer_jwk(data_dir);
    if !jwk.exists() {
        write_atomically(&jwk, soma_gateway::config::generate_dev_issuer_jwk().as_bytes())?;
        set_mode(&jwk, 0o600)?;
    }
    let operator_jwk = crate::token::dev_operator_issuer_jwk(data_dir);
    if !operator_jwk.exists() {
        write_atomically(
            &operator_jwk,
            soma_gateway::config::generate_dev_operator_issuer_jwk().as_bytes(),
        )?;
        set_mode(&operator_jwk, 0o600)?;
    }
    let config = data_dir.join("gateway.toml");
    let region = soma_gateway::Region::parse(&args.region).map_err(anyhow::Error::msg)?;
    let text = format!(
        "# Written by `soma up` at each start.\n{}",
        soma_gateway::config::dev_config_toml(&jwk, &operator_jwk, &region, Some(args.edge_addr))
    );
    write_atomically(&config, text.as_bytes())?;
    Ok(config)
}

/// Id of the development Analytics signing key (checkpoints, exports).
const ANALYTICS_SIGNING_KEY_ID: &str = "analytics-1";

/// Analytics' key files.
struct AnalyticsKeys {
    row_keys: PathBuf,
    signing_key: PathBuf,
}

/// Analytics' row MAC keyring and Ed25519 signing key, created once per
/// data dir; the public key is (re)written as PEM under
/// `DIR/public-keys/<key id>.pem` for offline verifiers.
fn ensure_analytics_keys(data_dir: &Path) -> anyhow::Result<AnalyticsKeys> {
    let secrets = data_dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    set_mode(&secrets, 0o700)?;
    let row_keys = secrets.join("analytics-row-keys.json");
    if !row_keys.exists() {
        let (_, json) = soma_sign::HmacKeyring::generate("row-1")?;
        write_atomically(&row_keys, &json)?;
        set_mode(&row_keys, 0o600)?;
    }
    let signing_key = secrets.join("analytics-signing.key");
    if !signing_key.exists() {
        let (_, pkcs8) =
            soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new(ANALYTICS_SIGNING_KEY_ID)?)?;
        write_atomically(&signing_key, pem_block("PRIVATE KEY", &pkcs8).as_bytes())?;
        set_mode(&signing_key, 0o600)?;
    }
    let signer = soma_sign::Ed25519Signer::from_pkcs8_pem(
        soma_sign::KeyId::new(ANALYTICS_SIGNING_KEY_ID)?,
        &std::fs::read_to_string(&signing_key)?,
    )?;
    let public = data_dir.join("public-keys");
    std::fs::create_dir_all(&public)?;
    write_atomically(
        &public.join(format!("{ANALYTICS_SIGNING_KEY_ID}.pem")),
        signer.public_key_pem().as_bytes(),
    )?;
    Ok(AnalyticsKeys {
        row_keys,
        signing_key,
    })
}

/// The tool registry's keyring (release seals and row MACs), created once
/// per data dir: `DIR/secrets/tool-registry-keys.json`.
pub(crate) fn ensure_registry_keys(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let secrets = data_dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    set_mode(&secrets, 0o700)?;
    let path = registry_keys_path(data_dir);
    if !path.exists() {
        let (_, json) = soma_sign::HmacKeyring::generate("registry-1")?;
        write_atomically(&path, &json)?;
        set_mode(&path, 0o600)?;
    }
    Ok(path)
}

/// The capsule repository's keyring (row MACs), created once per data
/// dir: `DIR/secrets/capsule-repo-keys.json`.
pub(crate) fn ensure_capsule_repo_keys(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let secrets = data_dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    set_mode(&secrets, 0o700)?;
    let path = secrets.join("capsule-repo-keys.json");
    if !path.exists() {
        let (_, json) = soma_sign::HmacKeyring::generate("capsule-repo-1")?;
        write_atomically(&path, &json)?;
        set_mode(&path, 0o600)?;
    }
    Ok(path)
}

/// The name of the template catalogue `soma up` pins for its operator.
pub(crate) const OPS_CATALOGUE: &str = "ops";

/// The operator's template catalogue `ops`: an Ed25519 key created once per
/// data dir (`DIR/secrets/ops-catalogue.key`, PKCS#8 PEM, 0600; its public
/// key in `DIR/public-keys/ops-catalogue.pem`), pinned with threshold 1 in
/// the catalogues file handed to CapsuleRepo (`DIR/capsule-repo-catalogues.json`,
/// rewritten at each start from the key). Templates the operator attests
/// with it (the drill's plan, `scripts/ops/schedule_dr_drill.sh import`)
/// can be imported; they still need a second reviewer's approval and an
/// installation before anything runs them.
fn ensure_ops_catalogue(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let secrets = data_dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    set_mode(&secrets, 0o700)?;
    let key = secrets.join("ops-catalogue.key");
    let id = soma_sign::KeyId::new("ops-catalogue")?;
    if !key.exists() {
        let (_, pkcs8) = soma_sign::Ed25519Signer::generate(id.clone())?;
        write_atomically(&key, pem_block("PRIVATE KEY", &pkcs8).as_bytes())?;
        set_mode(&key, 0o600)?;
    }
    let signer = soma_sign::Ed25519Signer::from_pkcs8_pem(id, &std::fs::read_to_string(&key)?)
        .with_context(|| format!("reading {}", key.display()))?;
    let public = data_dir.join("public-keys");
    std::fs::create_dir_all(&public)?;
    let pem = signer.public_key_pem();
    write_atomically(&public.join("ops-catalogue.pem"), pem.as_bytes())?;
    let catalogues = data_dir.join("capsule-repo-catalogues.json");
    let text = serde_json::json!({
        "catalogues": [{"name": OPS_CATALOGUE, "threshold": 1, "public_keys_pem": [pem]}]
    });
    write_atomically(&catalogues, text.to_string().as_bytes())?;
    Ok(catalogues)
}

/// Where a data dir keeps the tool registry's keyring.
pub(crate) fn registry_keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("tool-registry-keys.json")
}

pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The file whose lock says which `soma up` owns a data dir.
pub(crate) const DATA_DIR_LOCK: &str = "soma-up.lock";

/// Takes the data dir for this `soma up`: an exclusive lock on
/// `DIR/soma-up.lock` (`flock`), held as long as the returned file is open
/// and released by the kernel when the process ends however it ends, so
/// no stale lock outlives its holder. A second `soma up` on the same data
/// dir is refused before it touches anything there, even when both start
/// at the same instant on an empty one (each would otherwise create its
/// own keys and authority, and one would keep files the other replaced).
/// The holder's pid is written into the file, for the operator.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join(DATA_DIR_LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "another `soma up` is running on {} (it holds {}{})",
                data_dir.display(),
                path.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(", pid {holder}")
                }
            );
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(std::io::Error::from(e)).context(format!("locking {}", path.display()))
            );
        }
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Replaces `path` with `bytes` so that a reader, and the file system
/// after a crash, finds either the old content or the new one whole, never
/// a part or an empty file: the bytes go to a temporary file of this call
/// alone in the same directory (named after the target, this process and a
/// counter, so that concurrent writers of one path never write into each
/// other's), are flushed to disk, the file is renamed over `path`, and the
/// directory is flushed so that the rename itself survives a crash. Keys
/// and configurations written here are what a restart reads back.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};

    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file to write", path.display()))?;
    // A bare file name lives in the working directory.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
        });
    if let Err(e) = written {
        // Nothing of this call is left behind; `path` is untouched.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| {
            format!(
                "flushing the directory {} after writing {}",
                dir.display(),
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::write_atomically;

    /// Writers of one path at once each replace it whole: the file always
    /// holds one writer's complete bytes, and nothing else is left in the
    /// directory. With one temporary name per path, two writers wrote into
    /// the same file and one's rename found it gone.
    #[test]
    fn concurrent_writers_of_one_path_each_replace_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::thread::scope(|scope| {
            for writer in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for round in 0..25u8 {
                        let fill = writer.wrapping_mul(31).wrapping_add(round);
                        write_atomically(path, &vec![fill; 64 * 1024]).unwrap();
                        let now = std::fs::read(path).unwrap();
                        assert_eq!(now.len(), 64 * 1024);
                        assert!(now.iter().all(|b| *b == now[0]), "a mix of two writes");
                    }
                });
            }
        });
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("keys.json")]);
    }

    /// A write that cannot happen leaves the old file and no temporary one.
    #[test]
    fn a_failed_write_leaves_the_old_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        write_atomically(&path, b"old").unwrap();
        // A directory in the way of the rename.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        let err = write_atomically(&blocked, b"new").unwrap_err();
        assert!(format!("{err:#}").contains("renaming"), "{err:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["blocked", "config.toml"]);
    }
}
