//! `soma serve <service>`: one service, the production path.
//!
//! telemetry → settings → identity (Workload API) → database → build →
//! run until stopped. When the service listens, one JSON line goes to
//! standard output (`soma up` reads it to learn the bound addresses).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use soma_auth::{ClaimsSigner, ClaimsVerifier};
use soma_identity::{SpiffeId, WorkloadIdentity};
use soma_mesh::{Application, MeshChannel, MeshSettings, ServiceKind};
use soma_store::{Database, StoreSettings};

/// The line a started service prints on standard output.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReadyLine {
    /// Service name.
    pub service: String,
    /// The service's SPIFFE ID.
    pub spiffe_id: String,
    /// mTLS gRPC address.
    pub grpc_addr: String,
    /// Admin address.
    pub admin_addr: String,
    /// The gateway's HTTP/JSON + gRPC edge, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_addr: Option<String>,
}

pub async fn run(
    kind: ServiceKind,
    config: Option<PathBuf>,
    stop_on_stdin_eof: bool,
) -> anyhow::Result<ExitCode> {
    serve(kind, config, stop_on_stdin_eof)
        .await
        .map_err(|err| match taken_address(&err) {
            // One line an operator can act on, instead of a chain of
            // "assembling the gateway: cannot bind ...: Address already in use".
            Some((addr, listener)) => anyhow::anyhow!(
                "{kind}: cannot listen on {addr} ({listener}): address in use{}",
                holder(addr).map_or_else(String::new, |h| format!(" by {h}"))
            ),
            None => err,
        })
}

async fn serve(
    kind: ServiceKind,
    config: Option<PathBuf>,
    stop_on_stdin_eof: bool,
) -> anyhow::Result<ExitCode> {
    let settings = match MeshSettings::load(kind, config.as_deref(), |k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => return Ok(crate::config_error(e)),
    };

    // The gateway's own settings, validated before anything is contacted.
    let gateway_config = match kind {
        ServiceKind::Gateway => match soma_gateway::GatewayConfig::load(|k| std::env::var(k).ok()) {
            Ok(c) => Some(c),
            Err(e) => return Ok(crate::config_error(e)),
        },
        _ => None,
    };
    let identity = WorkloadIdentity::connect(
        settings.workload_api_socket.as_deref(),
        None,
        settings.identity_timeout,
    )
    .await
    .context("fetching the workload's X.509-SVID from the Workload API")?;
    let store = identity.store();
    let own_id = store.own_id().clone();
    if own_id.path() != kind.spiffe_path() {
        return Ok(crate::config_error(format_args!(
            "the Workload API issued {own_id}, but {kind} must run as spiffe://<trust-domain>{}",
            kind.spiffe_path()
        )));
    }

    let claims = match &settings.gateway_claims_public_key_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the gateway claims key {}", path.display()))?;
            let key = match ClaimsVerifier::public_key_from_spki_pem(&pem) {
                Ok(k) => k,
                Err(e) => return Ok(crate::config_error(format_args!("{}: {e}", path.display()))),
            };
            let gateway = SpiffeId::from_parts(own_id.trust_domain(), &ServiceKind::Gateway.spiffe_path())?;
            Some(ClaimsVerifier::new(
                gateway,
                own_id.clone(),
                vec![(settings.claims_key_id.clone(), key)],
            ))
        }
        None => {
            tracing::warn!("no gateway claims public key configured: every claims envelope will be refused");
            None
        }
    };

    // Service-specific settings, validated before anything is opened.
    let analytics_config = match kind {
        ServiceKind::Analytics => {
            match soma_analytics::AnalyticsConfig::from_env(
                |k| std::env::var(k).ok(),
                own_id.trust_domain().name(),
            ) {
                Ok(c) => Some(c),
                Err(e) => return Ok(crate::config_error(e)),
            }
        }
        _ => None,
    };
    let registry_config = match kind {
        ServiceKind::ToolRegistry => {
            match soma_tool_registry::RegistryConfig::from_env(|k| std::env::var(k).ok()) {
                Ok(c) => Some(c),
                Err(e) => return Ok(crate::config_error(e)),
            }
        }
        _ => None,
    };
    let capsule_repo_config = match kind {
        ServiceKind::CapsuleRepo => {
            match soma_capsule_repo::CapsuleRepoConfig::from_env(|k| std::env::var(k).ok()) {
                Ok(c) => Some(c),
                Err(e) => return Ok(crate::config_error(e)),
            }
        }
        _ => None,
    };
    let claims_signer = match (kind, &settings.gateway_claims_key_file) {
        (ServiceKind::Gateway, Some(path)) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the gateway claims key {}", path.display()))?;
            match ClaimsSigner::from_pkcs8_pem(&settings.claims_key_id, &pem) {
                Ok(s) => Some(s),
                Err(e) => return Ok(crate::config_error(format_args!("{}: {e}", path.display()))),
            }
        }
        (ServiceKind::Gateway, None) => {
            return Ok(crate::config_error(
                "the gateway needs SOMA_GATEWAY_CLAIMS_KEY_FILE to sign the claims it forwards",
            ));
        }
        _ => None,
    };

    let store_settings = StoreSettings {
        data_dir: settings.data_dir.clone(),
        database_url: settings.database_url.clone(),
    };
    let db = Database::connect(&store_settings, kind.name())
        .await
        .context("opening the database")?;
    let limits = settings.limits;
    let mut edge = None;
    let mut poller = None;
    let mut background = None;
    let spec = match kind {
        ServiceKind::Gateway => {
            db.migrate(&soma_gateway::MIGRATIONS).await?;
            let gateway = soma_gateway::Gateway::build(
                db.clone(),
                &limits,
                gateway_config.context("gateway settings")?,
                &store,
                &settings.peers,
                claims_signer.context("gateway claims key")?,
            )
            .await
            .context("assembling the gateway")?;
            edge = gateway.edge;
            poller = Some(gateway.poller);
            gateway.spec
        }
        ServiceKind::ToolRegistry => {
            db.migrate(&soma_tool_registry::MIGRATIONS).await?;
            let registry = soma_tool_registry::Registry::new(
                db.clone(),
                registry_config.context("tool registry settings")?,
                soma_sandbox::SandboxConfig::default(),
            )
            .context("assembling the tool registry")?;
            let resealed = registry.reseal().await.context("re-MACing the registry's rows")?;
            if !resealed.failed.is_empty() {
                tracing::error!(rows = ?resealed.failed, "registry rows fail their MAC; they are refused where read");
            }
            match &settings.peers.analytics {
                Some(addrs) => {
                    let analytics =
                        SpiffeId::from_parts(own_id.trust_domain(), &ServiceKind::Analytics.spiffe_path())?;
                    let channel = MeshChannel::new(std::sync::Arc::clone(&store), addrs, analytics)?;
                    background = Some(registry.spawn_outbox(channel));
                }
                None => tracing::warn!(
                    "no Analytics peer (SOMA_PEER_ANALYTICS): billing and audit events wait in the outbox"
                ),
            }
            soma_tool_registry::spec(db.clone(), registry, &limits)
        }
        ServiceKind::CapsuleRepo => {
            db.migrate(&soma_capsule_repo::MIGRATIONS).await?;
            let tool_registry = match &settings.peers.tool_registry {
                Some(addrs) => {
                    let registry = SpiffeId::from_parts(
                        own_id.trust_domain(),
                        &ServiceKind::ToolRegistry.spiffe_path(),
                    )?;
                    Some(MeshChannel::new(std::sync::Arc::clone(&store), addrs, registry)?)
                }
                None => {
                    tracing::warn!(
                        "no ToolRegistry peer (SOMA_PEER_TOOL_REGISTRY): submissions, installations and runs are refused"
                    );
                    None
                }
            };
            let repo = soma_capsule_repo::Repo::new(
                db.clone(),
                capsule_repo_config.context("capsule repository settings")?,
                tool_registry,
            );
            match &settings.peers.analytics {
                Some(addrs) => {
                    let analytics =
                        SpiffeId::from_parts(own_id.trust_domain(), &ServiceKind::Analytics.spiffe_path())?;
                    let channel = MeshChannel::new(std::sync::Arc::clone(&store), addrs, analytics)?;
                    background = Some(repo.spawn_outbox(channel));
                }
                None => {
                    tracing::warn!(
                        "no Analytics peer (SOMA_PEER_ANALYTICS): audit events wait in the outbox"
                    );
                }
            }
            soma_capsule_repo::spec(db.clone(), repo, &limits)
        }
        ServiceKind::Analytics => {
            db.migrate(&soma_analytics::MIGRATIONS).await?;
            soma_analytics::spec(
                db.clone(),
                &limits,
                analytics_config.context("analytics settings")?,
            )
            .await?
        }
    };

    let app = Application::build(settings, store, claims, spec).await?;
    if let Some(edge) = &edge {
        // The edge's connection counters beside the runtime's, on the
        // gateway's admin /metrics.
        app.metrics()
            .register(std::sync::Arc::new(edge.connection_metrics()));
        app.metrics()
            .register(std::sync::Arc::new(edge.request_metrics()));
    }
    let ready = ReadyLine {
        service: kind.name().to_owned(),
        spiffe_id: own_id.to_string(),
        grpc_addr: app.local_addr().to_string(),
        admin_addr: app.admin_addr().to_string(),
        edge_addr: edge.as_ref().map(|e| e.local_addr().to_string()),
    };
    #[expect(clippy::print_stdout, reason = "the ready line is this command's output")]
    {
        println!("{}", serde_json::to_string(&ready)?);
    }

    let shutdown = async move {
        if stop_on_stdin_eof {
            tokio::select! {
                () = crate::stop_signal() => {}
                () = stdin_closed() => {}
            }
        } else {
            crate::stop_signal().await;
        }
    };
    match edge {
        None => app.run_until_stopped(shutdown).await?,
        Some(edge) => {
            // One stop signal for both listeners.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let edge_task = tokio::spawn(edge.serve(wait(stop_rx.clone())));
            let stopper = tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
            let served = app.run_until_stopped(wait(stop_rx)).await;
            stopper.abort();
            match edge_task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "the edge stopped with an error"),
                Err(e) => tracing::error!(error = %e, "the edge task failed"),
            }
            served?;
        }
    }
    if let Some(poller) = poller {
        poller.abort();
    }
    if let Some(task) = background {
        task.abort();
    }
    identity.shutdown().await;
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves when standard input reaches end of file: the parent is gone.
///
/// The read runs on a plain thread that nobody joins. A blocking `read(0)`
/// cannot be cancelled, and the tokio runtime waits for its blocking-pool
/// threads when it is dropped: reading through `tokio::io::stdin` kept a
/// service alive for as long as its parent held the pipe open, after a
/// SIGTERM had already closed every listener. This thread ends with the
/// process instead.
fn stdin_closed() -> impl Future<Output = ()> {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-eof".to_owned())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = closed_tx.send(());
        });
    async move {
        match spawned {
            // An error means the thread ended without sending: also "closed".
            Ok(_) => {
                let _ = closed_rx.await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch standard input; only a signal stops this service");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The address (and which listener) that could not be bound because
/// another socket holds it, if that is what `err` is.
fn taken_address(err: &anyhow::Error) -> Option<(SocketAddr, &'static str)> {
    let in_use = |source: &std::io::Error| source.kind() == std::io::ErrorKind::AddrInUse;
    err.chain().find_map(|cause| {
        if let Some(soma_mesh::MeshError::Bind { addr, source }) = cause.downcast_ref() {
            return in_use(source).then_some((*addr, "its gRPC or admin listener"));
        }
        if let Some(soma_gateway::BuildError::Bind { addr, source }) = cause.downcast_ref() {
            return in_use(source).then_some((*addr, "the edge"));
        }
        None
    })
}

/// The process listening on `addr`'s port, as `pid N (name)`, from `/proc`
/// (Linux, and only processes this user may inspect). For the diagnosis
/// only: `None` whenever it cannot tell.
fn holder(addr: SocketAddr) -> Option<String> {
    // Sockets in state LISTEN (0A) on the port, by inode.
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, local, _, state, _, _, _, _, _, inode, ..] = fields.as_slice() else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && port == Some(addr.port()) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = process.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        });
        if holds {
            let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", name.trim()));
        }
    }
    None
}
