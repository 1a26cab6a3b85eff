//! The Gateway on the mesh runtime with identities written to disk, for the
//! handshake benchmark against `openssl s_server` (`scripts/bench/mesh.sh`).
//!
//! `bench_server DIR` opens a development authority for
//! `spiffe://somastack.bench` in `DIR/ca`, writes a server SVID
//! (`spiffe://somastack.bench/svc/gateway`) to `DIR/server/` and an operator
//! SVID (`spiffe://somastack.bench/operator/bench`) to `DIR/client/`
//! (`svid.pem`, `key.pem`, `bundle.pem` each), starts the Gateway with the
//! server SVID read back from those files (the very key OpenSSL is given),
//! prints `{"addr":"127.0.0.1:PORT","admin":"127.0.0.1:PORT"}` on standard
//! output and serves until its standard input closes.
//!
//! The runtime is the multi-thread one `soma serve` uses. Logs (warnings by
//! default, `RUST_LOG` to change) go to standard error.

#[path = "common/gateway.rs"]
mod gateway;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use soma_ca::Authority;
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, ServiceKind};
use soma_store::{Database, StoreSettings};
use tokio::io::AsyncReadExt as _;

const TRUST_DOMAIN: &str = "somastack.bench";
const CLIENT_PATH: &str = "/operator/bench";
/// Long enough for any benchmark run; the SVIDs are not rotated.
const TTL: Duration = Duration::from_secs(4 * 3600);

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: bench_server DIR")?
        .into();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(&dir))
}

async fn serve(dir: &Path) -> anyhow::Result<()> {
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let authority = Authority::open_or_create(&dir.join("ca"), &td).context("opening the authority")?;
    let kind = ServiceKind::Gateway;
    let server_id = SpiffeId::from_parts(&td, &kind.spiffe_path())?;
    let client_id = SpiffeId::from_parts(&td, CLIENT_PATH)?;
    let server_dir = dir.join("server");
    authority
        .issue_to_dir(&server_id, TTL, &server_dir)
        .context("issuing the server svid")?;
    authority
        .issue_to_dir(&client_id, TTL, &dir.join("client"))
        .context("issuing the client svid")?;

    // The identity the server runs with is the one on disk.
    let read = |name: &str| {
        let path = server_dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let svid = Svid::from_pem(&read("svid.pem")?, &read("key.pem")?)?;
    let mut bundles = BundleSet::new();
    bundles.insert(Bundle::from_pem(td.clone(), &read("bundle.pem")?)?);
    let store = SvidStore::new(server_id, svid, bundles)?;

    let settings = MeshSettings::load(kind, None, |_| None)?;
    let db = Database::connect(&StoreSettings::sqlite(dir.join("db")), kind.name()).await?;
    db.migrate(&soma_gateway::MIGRATIONS).await?;
    let spec = gateway::gateway_spec(db, &settings, &store, &dir.join("db")).await?;
    let app = Application::build(settings, store, None, spec).await?;

    // `admin` serves `/metrics`, whose handshake counters tell how many
    // handshakes the server itself completed.
    ready(&serde_json::json!({
        "addr": app.local_addr().to_string(),
        "admin": app.admin_addr().to_string(),
    }));
    app.run_until_stopped(async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    })
    .await?;
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the ready line is the example's output")]
fn ready(line: &serde_json::Value) {
    println!("{line}");
}
