//! JWKS refresh against a real HTTP server (axum on 127.0.0.1:0) that
//! serves whatever the test puts in its shared state and counts requests;
//! and HMAC secret rotation through a real file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use soma_auth::{Algorithm, IssuerSettings, JwtSettings, JwtVerifier};
use tokio::net::TcpListener;

use common::{EdKey, HsKey, mint, replace_json, write_json};

const ISSUER: &str = "https://idp.refresh.example";
const AUDIENCE: &str = "soma-gateway";

/// What the JWKS endpoint answers.
#[derive(Clone)]
enum Served {
    Json(Value),
    Body(&'static str, Vec<u8>),
    Status(StatusCode),
}

#[derive(Clone)]
struct Server {
    served: Arc<Mutex<Served>>,
    requests: Arc<AtomicU64>,
}

impl Server {
    async fn start(initial: Served) -> (Self, String) {
        let server = Self {
            served: Arc::new(Mutex::new(initial)),
            requests: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route("/jwks.json", get(serve))
            .with_state(server.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (server, url)
    }

    fn set(&self, served: Served) {
        *self.served.lock().unwrap() = served;
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(State(server): State<Server>) -> Response {
    server.requests.fetch_add(1, Ordering::SeqCst);
    let served = server.served.lock().unwrap().clone();
    match served {
        Served::Json(value) => axum::Json(value).into_response(),
        Served::Body(content_type, body) => ([("content-type", content_type)], body).into_response(),
        Served::Status(status) => status.into_response(),
    }
}

fn claims(now: i64) -> Value {
    json!({"iss": ISSUER, "sub": "u", "tenant": "t", "region": "r", "aud": AUDIENCE, "exp": now + 300})
}

fn ed_token(key: &EdKey, kid: &str, now: i64) -> String {
    let header = json!({"alg": "EdDSA", "kid": kid}).to_string();
    mint(&header, &claims(now).to_string(), |i| key.sign(i))
}

fn settings(issuer: IssuerSettings) -> JwtSettings {
    JwtSettings {
        issuers: vec![issuer],
        leeway: Duration::from_secs(30),
        max_token_bytes: 8192,
        max_lifetime: soma_auth::DEFAULT_MAX_LIFETIME,
    }
}

fn url_issuer(url: &str, interval: Duration) -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        algorithms: vec![Algorithm::EdDsa],
        jwks_url: Some(url.to_owned()),
        jwks_refresh_interval: interval,
        ..IssuerSettings::default()
    }
}

const NOW: i64 = 1_750_000_000;

/// The JWKS refresh interval of the tests that wait it out. The interval is
/// a rate limit on refetches; waiting it out with `sleep(REFRESH)` is exact,
/// not a guess with a margin: the verifier stamps its last attempt before
/// the test starts sleeping, and a tokio sleep lasts at least its duration.
/// Kept short so that the tests spend little time asleep.
const REFRESH: Duration = Duration::from_millis(50);

#[tokio::test]
async fn url_down_at_start_falls_back_to_the_file() {
    // A port that was bound and released: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let key = EdKey::generate();
    let file = write_json(dir.path(), "jwks.json", &json!({"keys": [key.jwk("file-1")]}));
    let verifier = JwtVerifier::new(settings(IssuerSettings {
        jwks_file: Some(file),
        ..url_issuer(&url, Duration::from_secs(30))
    }))
    .await
    .expect("a URL that is down is not fatal when the file has keys");
    assert_eq!(verifier.jwks_fetch_count(), 1, "the URL was tried once at start");
    let claims = verifier
        .verify(&ed_token(&key, "file-1", NOW), NOW)
        .await
        .unwrap();
    assert_eq!(claims.key_id, "file-1");
    // An unknown kid within the interval does not retry the dead URL.
    let err = verifier
        .verify(&ed_token(&key, "other", NOW), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_kid");
    assert_eq!(verifier.jwks_fetch_count(), 1);
}

#[tokio::test]
async fn garbage_keeps_the_last_good_set() {
    let key = EdKey::generate();
    let (server, url) = Server::start(Served::Json(json!({"keys": [key.jwk("good-1")]}))).await;
    let verifier = JwtVerifier::new(settings(url_issuer(&url, REFRESH)))
        .await
        .unwrap();
    assert_eq!(server.requests(), 1);
    let good = ed_token(&key, "good-1", NOW);
    verifier.verify(&good, NOW).await.unwrap();

    let huge = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(1024 * 1024 + 1)).into_bytes();
    let garbage = [
        (
            "bad json",
            Served::Body("application/json", b"{\"keys\": [".to_vec()),
        ),
        ("status 500", Served::Status(StatusCode::INTERNAL_SERVER_ERROR)),
        ("empty set", Served::Json(json!({"keys": []}))),
        (
            "no usable key",
            Served::Json(json!({"keys": [{"kty": "RSA", "kid": "weak", "n": "AQAB", "e": "AQAB"}]})),
        ),
        (
            "oct key in a public set",
            Served::Json(json!({"keys": [HsKey::generate().jwk("oct-1")]})),
        ),
        ("not a set", Served::Json(json!([key.jwk("good-1")]))),
        ("over 1 MiB", Served::Body("application/json", huge)),
    ];
    for (name, served) in garbage {
        server.set(served);
        // The refetch of the next miss is due once the interval has passed.
        tokio::time::sleep(REFRESH).await;
        let before = server.requests();
        // An unknown kid triggers the refetch, which gets the garbage.
        let err = verifier
            .verify(&ed_token(&key, "unknown", NOW), NOW)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_kid", "{name}");
        assert_eq!(server.requests(), before + 1, "{name}: one refetch");
        verifier
            .verify(&good, NOW)
            .await
            .unwrap_or_else(|e| panic!("{name}: old key lost: {e}"));
    }
}

#[tokio::test]
async fn a_new_kid_is_picked_up_after_one_refetch() {
    let old = EdKey::generate();
    let new = EdKey::generate();
    let (server, url) = Server::start(Served::Json(json!({"keys": [old.jwk("2024-01")]}))).await;
    let verifier = JwtVerifier::new(settings(url_issuer(&url, REFRESH)))
        .await
        .unwrap();
    verifier
        .verify(&ed_token(&old, "2024-01", NOW), NOW)
        .await
        .unwrap();

    server.set(Served::Json(json!({"keys": [new.jwk("2024-02")]})));
    tokio::time::sleep(REFRESH).await;
    let before = server.requests();
    let claims = verifier
        .verify(&ed_token(&new, "2024-02", NOW), NOW)
        .await
        .unwrap();
    assert_eq!(claims.key_id, "2024-02");
    assert_eq!(server.requests(), before + 1, "exactly one refetch");
    // The URL's set is what it serves now: the old key left with it.
    let err = verifier
        .verify(&ed_token(&old, "2024-01", NOW), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_kid");
    // A token signed by another key under the new kid is still refused.
    let err = verifier
        .verify(&ed_token(&old, "2024-02", NOW), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "bad_signature");
}

/// A flood of unknown kids is refused, and turns into refetches at the
/// refresh interval: never more than one per interval (the rate limit), and
/// at least one (the flood outlasts the interval, so a verifier that never
/// refetched on a miss would fail here; an upper bound alone let it pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_is_rate_limited() {
    let key = EdKey::generate();
    let (server, url) = Server::start(Served::Json(json!({"keys": [key.jwk("k1")]}))).await;
    let interval = Duration::from_millis(500);
    let verifier = JwtVerifier::new(settings(url_issuer(&url, interval)))
        .await
        .unwrap();
    let start_requests = server.requests();
    let started = Instant::now();

    const TOKENS: usize = 10_000;
    const TASKS: usize = 64;
    // The flood lasts at least this long after the start fetch (each task
    // cycles through its tokens until then), so a refetch falls due during
    // it however fast or slow the machine is.
    let span = 2 * interval;
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let verifier = verifier.clone();
        let refused = Arc::clone(&refused);
        let tokens: Vec<String> = (0..TOKENS / TASKS + usize::from(t < TOKENS % TASKS))
            .map(|_| ed_token(&key, &format!("kid-{:016x}", rand::random::<u64>()), NOW))
            .collect();
        tasks.push(tokio::spawn(async move {
            for (sent, token) in tokens.iter().cycle().enumerate() {
                if sent >= tokens.len() && started.elapsed() >= span {
                    break;
                }
                let err = verifier.verify(token, NOW).await.unwrap_err();
                assert_eq!(err.reason(), "unknown_kid");
                refused.fetch_add(1, Ordering::Relaxed);
                // Lets the other tasks of this worker in, so that the flood
                // stays concurrent while it is spread over the span.
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let fetched = server.requests() - start_requests;
    let allowed = elapsed.as_millis() as u64 / interval.as_millis() as u64 + 1;
    let refused = refused.load(Ordering::Relaxed);
    println!("{refused} unknown kids in {elapsed:?}: {fetched} fetches (allowed 1..={allowed})");
    assert!(refused >= TOKENS as u64, "{refused} refusals");
    assert!(
        fetched >= 1,
        "no refetch in {elapsed:?} of misses with a {interval:?} interval"
    );
    assert!(
        fetched <= allowed,
        "{fetched} fetches in {elapsed:?} with a {interval:?} interval"
    );
    assert_eq!(verifier.jwks_fetch_count(), start_requests + fetched);
    // The known key kept working throughout.
    verifier.verify(&ed_token(&key, "k1", NOW), NOW).await.unwrap();
}

#[tokio::test]
async fn hmac_secret_rotation_is_a_file_change() {
    let dir = tempfile::tempdir().unwrap();
    let old = HsKey::generate();
    let new = HsKey::generate();
    let path = write_json(dir.path(), "hs.jwk", &old.jwk("hs-2024-01"));
    let verifier = secret_file_verifier(&path).await;
    let hs_token = |key: &HsKey, kid: &str| hs_token(key, kid, NOW);
    let old_token = hs_token(&old, "hs-2024-01");
    verifier.verify(&old_token, NOW).await.unwrap();

    replace_json(&path, &new.jwk("hs-2024-02"));
    let claims = verifier.verify(&hs_token(&new, "hs-2024-02"), NOW).await.unwrap();
    assert_eq!(claims.key_id, "hs-2024-02");
    let err = verifier.verify(&old_token, NOW).await.unwrap_err();
    assert_eq!(err.reason(), "unknown_kid");

    // A broken rewrite keeps the keys in service. An unknown kid makes the
    // verifier look at the file at once (no need to sleep past the periodic
    // check): it finds the broken content and keeps the keys it has.
    std::fs::write(&path, b"{not json").unwrap();
    let err = verifier
        .verify(&hs_token(&new, "hs-2024-03"), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_kid");
    verifier.verify(&hs_token(&new, "hs-2024-02"), NOW).await.unwrap();
    // An in-place rewrite (same inode) with a new secret under the same kid
    // is seen by the once-per-second check, without any unknown kid. That
    // second is the behaviour under test, so the test waits it out: the last
    // check was stamped during the verify above, before the sleep starts.
    let newer = HsKey::generate();
    std::fs::write(&path, serde_json::to_vec(&newer.jwk("hs-2024-02")).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    verifier
        .verify(&hs_token(&newer, "hs-2024-02"), NOW)
        .await
        .unwrap();
    let err = verifier
        .verify(&hs_token(&new, "hs-2024-02"), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "bad_signature");
}

/// A flood of made-up kids costs no look at the key file: an unknown kid
/// checks the file only after its directory changed (the watch answers
/// without a stat otherwise), so a hostile token stays cheaper than a valid
/// one. A rotation is still seen by the very first token naming the new
/// key, whether the file was renamed over, rewritten in place or reached
/// through a link swapped in its directory (as Kubernetes volumes do); and
/// after each change one look suffices, however many misses follow.
#[tokio::test]
async fn unknown_kids_look_at_the_key_file_only_after_its_directory_changed() {
    let dir = tempfile::tempdir().unwrap();
    // The Kubernetes layout: `hs.jwk -> ..data/hs.jwk`, `..data -> v1`.
    let (v1, v2, v3) = (HsKey::generate(), HsKey::generate(), HsKey::generate());
    std::fs::create_dir(dir.path().join("v1")).unwrap();
    write_json(&dir.path().join("v1"), "hs.jwk", &v1.jwk("hs-v1"));
    std::os::unix::fs::symlink("v1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("hs.jwk");
    std::os::unix::fs::symlink("..data/hs.jwk", &path).unwrap();
    let verifier = secret_file_verifier(&path).await;
    let hs_token = |key: &HsKey, kid: &str| hs_token(key, kid, NOW);
    let unknown: Vec<String> = (0..500).map(|n| hs_token(&v1, &format!("made-up-{n}"))).collect();
    verifier.verify(&hs_token(&v1, "hs-v1"), NOW).await.unwrap();
    flood(&verifier, &unknown).await;

    // Rotations of three kinds, each seen by the first token naming the new
    // key, each followed by a flood that looks at the file at most once
    // more (the first miss after the change, if the rotation's token did
    // not already).
    /// How a rotation is made, and the key and kid it puts in service.
    struct Rotation<'a> {
        how: &'static str,
        key: &'a HsKey,
        kid: &'static str,
        rotate: Box<dyn Fn() + 'a>,
    }
    let rotations = [
        Rotation {
            how: "a link in the directory swapped",
            key: &v2,
            kid: "hs-v2",
            rotate: Box::new(|| {
                let v2_dir = dir.path().join("v2");
                std::fs::create_dir(&v2_dir).unwrap();
                write_json(&v2_dir, "hs.jwk", &v2.jwk("hs-v2"));
                std::os::unix::fs::symlink("v2", dir.path().join("..data_tmp")).unwrap();
                std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
            }),
        },
        Rotation {
            how: "the file renamed over",
            key: &v3,
            kid: "hs-v3",
            rotate: Box::new(|| replace_json(&path, &v3.jwk("hs-v3"))),
        },
        Rotation {
            how: "the file rewritten in place, with another length",
            key: &v1,
            kid: "hs-v1-again",
            rotate: Box::new(|| {
                std::fs::write(&path, serde_json::to_vec_pretty(&v1.jwk("hs-v1-again")).unwrap()).unwrap();
            }),
        },
    ];
    for Rotation {
        how,
        key,
        kid,
        rotate,
    } in rotations
    {
        rotate();
        let before = verifier.key_file_check_count();
        let claims = verifier
            .verify(&hs_token(key, kid), NOW)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{how}: the first token of the new key was refused: {}",
                    e.reason()
                )
            });
        assert_eq!(claims.key_id, kid, "{how}");
        assert!(
            verifier.key_file_check_count() > before,
            "{how}: the file was not looked at"
        );
        flood(&verifier, &unknown).await;
    }
}

/// A verifier of HS256 tokens whose only key source is the secret file at
/// `path`.
async fn secret_file_verifier(path: &std::path::Path) -> JwtVerifier {
    JwtVerifier::new(settings(IssuerSettings {
        issuer: ISSUER.to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        algorithms: vec![Algorithm::Hs256],
        hmac_secret_file: Some(path.to_owned()),
        ..IssuerSettings::default()
    }))
    .await
    .unwrap()
}

/// Verifies every token of `unknown` (each an unknown kid) and checks that
/// the file was looked at no more than the periodic check allows: once per
/// second the flood lasted, and once.
async fn flood(verifier: &JwtVerifier, unknown: &[String]) {
    let (before, started) = (verifier.key_file_check_count(), Instant::now());
    for token in unknown {
        let err = verifier.verify(token, NOW).await.unwrap_err();
        assert_eq!(err.reason(), "unknown_kid");
    }
    let looks = verifier.key_file_check_count() - before;
    let allowed = 1 + started.elapsed().as_secs();
    assert!(
        looks <= allowed,
        "{looks} looks at the key file for {} misses",
        unknown.len()
    );
}

/// Serves `app` over HTTPS with a certificate for `localhost`; returns the
/// URL of `/jwks.json` and the certificate's PEM.
async fn start_https(app: Router) -> (String, String) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/jwks.json",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    (url, cert.pem())
}

#[tokio::test]
async fn an_https_jwks_url_is_trusted_only_through_its_ca_file() {
    let key = EdKey::generate();
    let server = Server {
        served: Arc::new(Mutex::new(Served::Json(json!({"keys": [key.jwk("tls-1")]})))),
        requests: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/jwks.json", get(serve))
        .with_state(server.clone());
    let (url, pem) = start_https(app).await;
    let dir = tempfile::tempdir().unwrap();
    let right = dir.path().join("right.pem");
    std::fs::write(&right, &pem).unwrap();
    let verifier = JwtVerifier::new(settings(IssuerSettings {
        jwks_ca_file: Some(right),
        ..url_issuer(&url, Duration::from_secs(30))
    }))
    .await
    .unwrap();
    let claims = verifier.verify(&ed_token(&key, "tls-1", NOW), NOW).await.unwrap();
    assert_eq!(claims.key_id, "tls-1");
    assert_eq!(server.requests(), 1);

    // Another CA: the handshake fails, no key set is ever accepted.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&other_key)
        .unwrap();
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, other.pem()).unwrap();
    let verifier = JwtVerifier::new(settings(IssuerSettings {
        jwks_ca_file: Some(wrong),
        ..url_issuer(&url, Duration::from_secs(30))
    }))
    .await
    .unwrap();
    let err = verifier
        .verify(&ed_token(&key, "tls-1", NOW), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_kid");
    assert_eq!(server.requests(), 1, "no request got past the handshake");

    // An https URL without a CA file is a configuration error.
    let err = JwtVerifier::new(settings(url_issuer(&url, Duration::from_secs(30))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("jwks_ca_file"), "{err}");
}

/// An issuer with all three sources: an HMAC secret file, a JWKS file and
/// a JWKS URL, so that a miss of one algorithm's kind can be told apart
/// from a miss of the other.
async fn three_source_verifier(
    dir: &std::path::Path,
    url: &str,
    hs: &HsKey,
    ed: &EdKey,
) -> (JwtVerifier, std::path::PathBuf, std::path::PathBuf) {
    let secret_path = write_json(dir, "hs.jwk", &hs.jwk("hs-1"));
    let jwks_path = write_json(dir, "jwks.json", &json!({"keys": [ed.jwk("ed-file-1")]}));
    let verifier = JwtVerifier::new(settings(IssuerSettings {
        algorithms: vec![Algorithm::Hs256, Algorithm::EdDsa],
        hmac_secret_file: Some(secret_path.clone()),
        jwks_file: Some(jwks_path.clone()),
        ..url_issuer(url, REFRESH)
    }))
    .await
    .unwrap();
    (verifier, secret_path, jwks_path)
}

fn hs_token(key: &HsKey, kid: &str, now: i64) -> String {
    let header = json!({"alg": "HS256", "kid": kid}).to_string();
    mint(&header, &claims(now).to_string(), |i| key.sign(i))
}

/// A miss re-reads the sources that can hold a key of the token's
/// algorithm, at once: a public key added to the JWKS file is in service
/// for the very next token naming it, with no wait and no URL involved.
#[tokio::test]
async fn a_new_public_kid_in_the_jwks_file_is_picked_up_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (hs, ed, next) = (HsKey::generate(), EdKey::generate(), EdKey::generate());
    let (_server, url) = Server::start(Served::Json(json!({"keys": [ed.jwk("ed-url-1")]}))).await;
    let (verifier, _, jwks_path) = three_source_verifier(dir.path(), &url, &hs, &ed).await;
    verifier
        .verify(&ed_token(&ed, "ed-file-1", NOW), NOW)
        .await
        .unwrap();

    replace_json(
        &jwks_path,
        &json!({"keys": [ed.jwk("ed-file-1"), next.jwk("ed-file-2")]}),
    );
    let claims = verifier
        .verify(&ed_token(&next, "ed-file-2", NOW), NOW)
        .await
        .unwrap();
    assert_eq!(claims.key_id, "ed-file-2");
}

/// An HS256 token with an unknown kid cannot be helped by a public source
/// (a key's algorithm must be the token's), so it never makes the verifier
/// fetch the JWKS URL; an EdDSA one does, rate-limited. And the secret file
/// is still re-read at once: a rotated secret verifies its first token.
#[tokio::test]
async fn an_unknown_hmac_kid_fetches_no_url_but_rereads_the_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let (hs, ed, new) = (HsKey::generate(), EdKey::generate(), HsKey::generate());
    let (server, url) = Server::start(Served::Json(json!({"keys": [ed.jwk("ed-url-1")]}))).await;
    let (verifier, secret_path, _) = three_source_verifier(dir.path(), &url, &hs, &ed).await;
    let at_start = server.requests();
    assert_eq!(at_start, 1, "the start fetch");
    // Past the rate limit: a refetch would be allowed now.
    tokio::time::sleep(REFRESH).await;

    for n in 0..20 {
        let err = verifier
            .verify(&hs_token(&hs, &format!("hs-unknown-{n}"), NOW), NOW)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_kid");
    }
    assert_eq!(server.requests(), at_start, "HS256 misses fetched the JWKS URL");
    assert_eq!(verifier.jwks_fetch_count(), at_start);

    // The same miss with an EdDSA token does fetch (the URL may serve it).
    let err = verifier
        .verify(&ed_token(&ed, "ed-unknown", NOW), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_kid");
    assert_eq!(server.requests(), at_start + 1, "an EdDSA miss refetches");

    replace_json(&secret_path, &new.jwk("hs-2"));
    let claims = verifier.verify(&hs_token(&new, "hs-2", NOW), NOW).await.unwrap();
    assert_eq!(claims.key_id, "hs-2");
    assert_eq!(server.requests(), at_start + 1);
}

/// A key that the URL adds is found by the second pass of a verification
/// that had to wait for the refetch, and that pass runs every check again:
/// a bad signature and an expired token under a just-fetched kid are
/// refused with their own reasons, a good token is accepted.
#[tokio::test]
async fn the_pass_after_a_refetch_runs_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let (hs, ed) = (HsKey::generate(), EdKey::generate());
    let (second, third) = (EdKey::generate(), EdKey::generate());
    let (server, url) = Server::start(Served::Json(json!({"keys": [ed.jwk("ed-url-1")]}))).await;
    let (verifier, _, _) = three_source_verifier(dir.path(), &url, &hs, &ed).await;

    server.set(Served::Json(
        json!({"keys": [ed.jwk("ed-url-1"), second.jwk("ed-url-2")]}),
    ));
    tokio::time::sleep(REFRESH).await;
    // Signed with another key than the one ed-url-2 names.
    let forged = ed_token(&ed, "ed-url-2", NOW);
    assert_eq!(
        verifier.verify(&forged, NOW).await.unwrap_err().reason(),
        "bad_signature"
    );
    assert_eq!(server.requests(), 2);

    server.set(Served::Json(json!({"keys": [third.jwk("ed-url-3")]})));
    tokio::time::sleep(REFRESH).await;
    let expired = ed_token(&third, "ed-url-3", NOW - 3600);
    assert_eq!(
        verifier.verify(&expired, NOW).await.unwrap_err().reason(),
        "expired"
    );
    assert_eq!(server.requests(), 3);
    let claims = verifier
        .verify(&ed_token(&third, "ed-url-3", NOW), NOW)
        .await
        .unwrap();
    assert_eq!(claims.key_id, "ed-url-3");
}
