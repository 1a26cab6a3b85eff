//! The client of the handshake benchmark (`scripts/bench/mesh.sh`, section
//! 2): full mTLS handshakes to one server, one after the other, for a fixed
//! time, each counted only once the server has shown that it completed its
//! side of the handshake.
//!
//! Why not `openssl s_time -new`: s_time counts a handshake as soon as its
//! own side is done and closes the connection at once. In TLS 1.3 the
//! client's side ends one flight before the server's (the server still has
//! to read the client's certificate, check it, verify its CertificateVerify
//! signature and its Finished), so s_time counted connections that the
//! server never completed, and a server that read more slowly was credited
//! with handshakes it did not do.
//!
//! Here, for each connection: TCP (`TCP_NODELAY`), the TLS 1.3 handshake with
//! the client SVID (the server's SVID verified by the same SPIFFE rules the
//! mesh applies, `soma_identity::client_config`), then the client sends
//! `close_notify` and reads until the server closes. Records are processed in
//! order, so a server that answers that `close_notify` with its own (or
//! closes the connection cleanly after it) has read, checked and accepted the
//! client's whole last flight first; a server that refuses the client
//! answers with an alert, which counts as a failure. Both servers are driven
//! by this same client, sequentially (one connection at a time, as s_time
//! does), so each server's rate includes the same client cost.
//!
//! `handshake_client --addr HOST:PORT --svid-dir DIR --server-id ID --seconds N`
//! reads `svid.pem`, `key.pem` and `bundle.pem` from `DIR` and prints
//! `result.<key>=<value>` lines: `handshakes` (confirmed by the server),
//! `close_notify` (of which the server answered with its own close_notify),
//! `failed`, `seconds` (wall time measured).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use soma_identity::{Bundle, BundleSet, ExpectedPeer, SpiffeId, Svid, SvidStore};

#[derive(Debug, Parser)]
#[command(about = "Sequential full mTLS handshakes, each confirmed by the server")]
struct Args {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Directory holding the client's `svid.pem`, `key.pem` and `bundle.pem`.
    #[arg(long)]
    svid_dir: PathBuf,
    /// The SPIFFE ID the server must present.
    #[arg(long)]
    server_id: String,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// How one connection ended.
enum Outcome {
    /// The server answered the client's close_notify with its own.
    CloseNotify,
    /// The server closed the connection cleanly (no alert) after the
    /// client's close_notify.
    Closed,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let read = |name: &str| {
        let path = args.svid_dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let svid = Svid::from_pem(&read("svid.pem")?, &read("key.pem")?)?;
    let own_id = svid.spiffe_id().clone();
    let mut bundles = BundleSet::new();
    bundles.insert(Bundle::from_pem(
        own_id.trust_domain().clone(),
        &read("bundle.pem")?,
    )?);
    let store = SvidStore::new(own_id, svid, bundles)?;
    let server_id = SpiffeId::parse(&args.server_id)?;
    let config = soma_identity::client_config(store, ExpectedPeer::Exact(server_id))?;
    // SPIFFE authenticates the server by its URI SAN; the name only routes.
    let name = ServerName::try_from("localhost")?;

    // One connection before the clock starts: a server that refuses this
    // client is an error, not a slow run.
    one_handshake(&args.addr, &config, &name).context("first handshake")?;

    let duration = Duration::from_secs(args.seconds);
    let (mut handshakes, mut close_notify, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let start = Instant::now();
    while start.elapsed() < duration {
        match one_handshake(&args.addr, &config, &name) {
            Ok(outcome) => {
                handshakes += 1;
                if matches!(outcome, Outcome::CloseNotify) {
                    close_notify += 1;
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        warn(&format!("{failed} failed handshakes, the first: {e}"));
    }
    report(handshakes, close_notify, failed, seconds);
    Ok(())
}

/// One connection: handshake, close_notify, then read until the server closes.
fn one_handshake(
    addr: &SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
) -> anyhow::Result<Outcome> {
    let mut tcp = TcpStream::connect(addr).context("connecting")?;
    tcp.set_nodelay(true)?;
    let mut tls = ClientConnection::new(Arc::clone(config), name.clone())?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).context("handshake")?;
    }
    tls.send_close_notify();
    while tls.wants_write() {
        tls.write_tls(&mut tcp).context("sending close_notify")?;
    }
    tcp.flush()?;
    let mut plaintext = [0u8; 4096];
    loop {
        let n = match tls.read_tls(&mut tcp) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A reset after the client's close_notify: the server may have
            // closed with unread data; that is not a clean confirmation.
            Err(e) => bail!("reading the server's close: {e}"),
        };
        if n == 0 {
            return Ok(Outcome::Closed);
        }
        // An alert (a refused client certificate) fails here.
        let state = tls.process_new_packets().context("the server's reply")?;
        // Application data the server sent first (an HTTP/2 server's
        // SETTINGS) is read and dropped.
        loop {
            match tls.reader().read(&mut plaintext) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading application data"),
            }
        }
        if state.peer_has_closed() {
            return Ok(Outcome::CloseNotify);
        }
    }
}

#[expect(clippy::print_stderr, reason = "failures are reported on standard error")]
fn warn(line: &str) {
    eprintln!("handshake_client: {line}");
}

#[expect(clippy::print_stdout, reason = "the result lines are the example's output")]
fn report(handshakes: u64, close_notify: u64, failed: u64, seconds: f64) {
    println!("result.handshakes={handshakes}");
    println!("result.close_notify={close_notify}");
    println!("result.failed={failed}");
    println!("result.seconds={seconds:.6}");
}
