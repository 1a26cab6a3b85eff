//! What the commands over files and the JSON edge (`soma release`,
//! `soma capsule`) share: bounded reads of their input files, their output
//! lines and one-line refusals, and a POST to the edge.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};

/// Exit status of a refusal: an invalid input or a failed verification.
const EXIT_REFUSED: u8 = 1;
/// Largest manifest, bundle, envelope, predicate or key file read.
pub(crate) const MAX_TEXT_FILE: u64 = 1024 * 1024;

/// Reads `path`, refusing a file larger than `limit` before reading it.
pub(crate) fn read_limited(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > limit {
        bail!("{}: larger than {limit} bytes", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a PEM file (at most [`MAX_TEXT_FILE`] bytes of UTF-8).
pub(crate) fn read_pem(path: &Path) -> anyhow::Result<String> {
    String::from_utf8(read_limited(path, MAX_TEXT_FILE)?)
        .map_err(|_| anyhow!("{}: not UTF-8", path.display()))
}

/// The authority of an edge given as `http://HOST[:PORT]`: only plain
/// HTTP/1.1 is spoken here.
pub(crate) fn edge_authority(edge: &str) -> anyhow::Result<http::uri::Authority> {
    let uri: http::Uri = edge.parse().with_context(|| format!("--edge {edge:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--edge {edge:?}: only http:// edges are supported here");
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| anyhow!("--edge {edge:?} has no host"))
}

/// POSTs `body` to `path` on the edge at `authority` with a bearer token
/// (plain HTTP/1.1); answers the status and the body.
pub(crate) async fn post_json(
    authority: &http::uri::Authority,
    path: &str,
    token: &str,
    body: &[u8],
) -> anyhow::Result<(http::StatusCode, Vec<u8>)> {
    request(http::Method::POST, authority, path, Some(token), Some(body)).await
}

/// One request to the edge at `authority` (plain HTTP/1.1, its own
/// connection), with a bearer token and a JSON body when given; answers the
/// status and the body.
pub(crate) async fn request(
    method: http::Method,
    authority: &http::uri::Authority,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> anyhow::Result<(http::StatusCode, Vec<u8>)> {
    use http_body_util::BodyExt as _;
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str());
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = builder.body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
        body.unwrap_or_default(),
    )))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let reply = response.into_body().collect().await?.to_bytes().to_vec();
    driver.abort();
    Ok((status, reply))
}

/// One line of the command's output, on standard output.
#[expect(clippy::print_stdout, reason = "the command's output")]
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    println!("{line}");
}

/// A refusal: one line on standard error, exit [`EXIT_REFUSED`].
#[expect(clippy::print_stderr, reason = "the command's one-line reason")]
pub(crate) fn refused(line: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("soma: {line}");
    ExitCode::from(EXIT_REFUSED)
}
