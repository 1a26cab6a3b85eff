//! Where an issuer's keys come from: files re-read when they change (so a
//! rotation is a file change) and JWKS URLs refetched on an unknown `kid`,
//! rate-limited and single-flight, keeping the last good set.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http::header::{ACCEPT, HOST};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::dirwatch::DirWatch;
use crate::error::JwtConfigError;
use crate::jwk::{KeyKind, KeyList, parse_key_source};

/// How often a key file is stat'ed on the request path at most.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Whole-fetch deadline: connect, TLS, request and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWK Set body read; a bigger one is garbage, not a key set.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A key file whose keys are replaced when its metadata changes. A file
/// that fails to parse after a change keeps the previous keys in service.
pub(crate) struct WatchedFile {
    path: PathBuf,
    kind: KeyKind,
    keys: RwLock<Arc<KeyList>>,
    stamp: Mutex<Option<FileStamp>>,
    /// Milliseconds since [`monotonic_millis`]'s origin of the last stat;
    /// an atomic so that exactly one request per second pays for it.
    last_check_ms: AtomicU64,
    /// Whether the file's directory changed since a miss last asked.
    watch: DirWatch,
    /// Stats of key files since start, shared by the verifier's files.
    stats: Arc<AtomicU64>,
}

/// What identifies a version of a file without reading it. The inode makes
/// an atomic replace (write then rename) visible even within one mtime tick.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl WatchedFile {
    /// Reads and parses the file once; at start a missing or invalid file is
    /// a configuration error.
    /// `stats` counts every stat of the file from then on.
    pub(crate) fn load(path: &Path, kind: KeyKind, stats: Arc<AtomicU64>) -> Result<Self, JwtConfigError> {
        let read_err = |source| JwtConfigError::ReadFile {
            path: path.to_owned(),
            source,
        };
        // Watched before it is read: a change between the two is an event.
        let (watch, unwatched) = DirWatch::on_directory_of(path);
        if let Some(why) = unwatched {
            tracing::info!(path = %path.display(), reason = %why, "key file without a directory watch: every unknown kid checks it");
        }
        let stamp = FileStamp::of(&fs::metadata(path).map_err(read_err)?);
        let bytes = fs::read(path).map_err(read_err)?;
        let keys = parse_key_source(&bytes, kind).map_err(|reason| JwtConfigError::InvalidKeyFile {
            path: path.to_owned(),
            reason,
        })?;
        Ok(Self {
            path: path.to_owned(),
            kind,
            keys: RwLock::new(Arc::new(keys)),
            stamp: Mutex::new(Some(stamp)),
            last_check_ms: AtomicU64::new(monotonic_millis()),
            watch,
            stats,
        })
    }

    /// The keys currently in service.
    pub(crate) fn keys(&self) -> Arc<KeyList> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reloads the file if it changed, at most once per second across all
    /// callers: the request path calls this on every token.
    /// `now` is [`monotonic_millis`], read once by the caller for all its
    /// files.
    pub(crate) fn check_due(&self, now: u64) {
        let last = self.last_check_ms.load(Ordering::Relaxed);
        let interval = FILE_CHECK_INTERVAL.as_millis() as u64;
        if now.saturating_sub(last) < interval {
            return;
        }
        // The winner of the exchange does the stat; concurrent callers keep
        // using the current keys instead of queueing behind it.
        if self
            .last_check_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.reload_if_changed();
        }
    }

    /// Reloads the file if it changed since the last look, called on a
    /// miss: a token named a kid that no key has, which is what a rotation
    /// looks like from the request side, and what a flood of made-up kids
    /// looks like too. The directory watch ([`DirWatch`]) answers first:
    /// when nothing in the file's directory changed since a miss last asked,
    /// the file is not checked at all; after a change it is checked once.
    pub(crate) fn check_on_miss(&self) {
        // Under the stamp's lock: a concurrent miss waits for the reload an
        // event started, instead of finding the events consumed and the
        // keys not yet replaced.
        let mut stamp = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.watch.changed() {
            return;
        }
        self.last_check_ms.store(monotonic_millis(), Ordering::Relaxed);
        self.reload_locked(&mut stamp);
    }

    fn reload_if_changed(&self) {
        let mut stamp = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        self.reload_locked(&mut stamp);
    }

    /// Stats the file and, when its stamp is not `current`, reads it.
    fn reload_locked(&self, current: &mut Option<FileStamp>) {
        self.stats.fetch_add(1, Ordering::Relaxed);
        let stamp = match fs::metadata(&self.path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "key file unreadable, keys kept");
                return;
            }
        };
        if current.as_ref() == Some(&stamp) {
            return;
        }
        // The stamp is recorded even when the new content is bad, so a bad
        // file is parsed once per change rather than once per check.
        *current = Some(stamp);
        let parsed = fs::read(&self.path)
            .map_err(|err| err.to_string())
            .and_then(|bytes| parse_key_source(&bytes, self.kind));
        match parsed {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "key file reloaded");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
            }
            Err(reason) => {
                tracing::warn!(path = %self.path.display(), %reason, "key file changed but is unusable, keys kept");
            }
        }
    }
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        }
    }
}

/// A JWKS URL and the last good key set it served.
pub(crate) struct UrlSource {
    target: FetchTarget,
    keys: RwLock<Arc<KeyList>>,
    last_attempt: Mutex<Option<Instant>>,
    /// Held for the duration of a fetch: concurrent misses wait for the one
    /// fetch in flight and then look at its result instead of fetching.
    single_flight: tokio::sync::Mutex<()>,
    interval: Duration,
    fetch_count: Arc<AtomicU64>,
}

impl UrlSource {
    /// Parses the URL (and the CA file of an `https://` URL); fetches nothing.
    pub(crate) fn new(
        url: &str,
        ca_file: Option<&Path>,
        interval: Duration,
        fetch_count: Arc<AtomicU64>,
    ) -> Result<Self, JwtConfigError> {
        Ok(Self {
            target: FetchTarget::parse(url, ca_file)?,
            keys: RwLock::new(Arc::new(KeyList::new())),
            last_attempt: Mutex::new(None),
            single_flight: tokio::sync::Mutex::new(()),
            interval,
            fetch_count,
        })
    }

    /// The last good key set (empty until a fetch succeeds).
    pub(crate) fn keys(&self) -> Arc<KeyList> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Fetches now, whatever the interval: used once at start.
    pub(crate) async fn fetch_now(&self) {
        let _flight = self.single_flight.lock().await;
        self.fetch_and_store().await;
    }

    /// Refetches after a token named an unknown kid, unless a fetch was
    /// attempted less than one refresh interval ago. Returns when the keys
    /// are as fresh as this rule allows, so the caller looks them up again.
    pub(crate) async fn refetch_on_miss(&self) {
        if !self.due() {
            return;
        }
        let _flight = self.single_flight.lock().await;
        // Checked again under the lock: the task that held it has just
        // fetched, and its result is what this miss must see.
        if !self.due() {
            return;
        }
        self.fetch_and_store().await;
    }

    /// Whether a refetch is allowed now: none attempted yet, or the last
    /// one at least one refresh interval ago.
    pub(crate) fn due(&self) -> bool {
        let last = *self.last_attempt.lock().unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|at| at.elapsed() >= self.interval)
    }

    async fn fetch_and_store(&self) {
        // Failed attempts count toward the rate limit too: a URL that is
        // down must not be hammered by every unknown kid.
        *self.last_attempt.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.fetch_count.fetch_add(1, Ordering::Relaxed);
        match self.target.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.target.url, keys = keys.len(), "jwks fetched");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
            }
            Err(reason) => {
                tracing::warn!(url = %self.target.url, %reason, "jwks fetch failed, last good set kept");
            }
        }
    }
}

/// A parsed JWKS URL and the TLS client for `https://`.
struct FetchTarget {
    url: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl FetchTarget {
    fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, JwtConfigError> {
        let invalid = |reason| JwtConfigError::InvalidJwksUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a url"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("scheme is not http or https")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the url"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let tls = if https {
            let ca_err = |reason: String| JwtConfigError::CaFile {
                url: url.to_owned(),
                reason,
            };
            let ca_file = ca_file.ok_or_else(|| ca_err("an https url needs jwks_ca_file".to_owned()))?;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| ca_err(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no certificate in the file".to_owned()));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ca_err(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name =
                ServerName::try_from(host.clone()).map_err(|_| invalid("host is not a server name"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            authority: authority.as_str().to_owned(),
            path,
            tls,
        })
    }

    /// One GET, bounded in time and size; the body must be a JWK Set with
    /// at least one usable public key.
    async fn fetch(&self) -> Result<KeyList, String> {
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            match &self.tls {
                Some((connector, name)) => {
                    let stream = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("tls: {e}"))?;
                    get(TokioIo::new(stream), &self.authority, &self.path).await
                }
                None => get(TokioIo::new(tcp), &self.authority, &self.path).await,
            }
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| "timed out".to_owned())??;
        parse_key_source(&body, KeyKind::Public)
    }
}

/// HTTP/1.1 GET over an established stream; only a 200 with a body of at
/// most [`MAX_JWKS_BYTES`] is returned.
async fn get<IO>(io: IO, authority: &str, path: &str) -> Result<Bytes, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {e}"))?;
    // The connection is driven by its own task and closed when this
    // function returns, whichever way.
    let _connection = AbortOnDrop(tokio::spawn(connection));
    let request = http::Request::get(path)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(body.to_bytes())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Milliseconds on a process-wide monotonic clock.
pub(crate) fn monotonic_millis() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    // Saturates after 584 million years of uptime.
    u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}
