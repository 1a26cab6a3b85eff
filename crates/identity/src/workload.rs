//! The workload's identity from the SPIFFE Workload API (a SPIRE agent in
//! production, `soma-ca` in development), through the `spiffe` crate's
//! `X509Source`.
//!
//! Every update of the source is converted and handed to
//! [`SvidStore::rotate`], which validates before it swaps: a bad update is
//! logged and the previous SVID keeps serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::bundle::{Bundle, BundleSet};
use crate::error::IdentityError;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::SvidStore;
use crate::svid::Svid;

/// The environment variable naming the Workload API socket.
const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Backoff between reconnection attempts to the Workload API.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long the one diagnostic request made when the first SVID is late
/// may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Production/dev identity source: the SPIFFE Workload API through the
/// spiffe crate's `X509Source`, feeding an [`SvidStore`].
#[derive(Debug)]
pub struct WorkloadIdentity {
    store: Arc<SvidStore>,
    source: Arc<spiffe::X509Source>,
    updater: JoinHandle<()>,
}

impl WorkloadIdentity {
    /// Connects to the Workload API at `endpoint` (`unix:///abs/path.sock`,
    /// `unix:/abs/path.sock`, `tcp://IP:PORT`, or `None` for
    /// `SPIFFE_ENDPOINT_SOCKET`), waits up to `timeout` for the first SVID
    /// (the source retries with backoff meanwhile), builds the store (its own
    /// ID is the first SVID's, which must equal `expected_id` when given),
    /// and spawns the task that rotates on every update.
    ///
    /// When no SVID comes in time, the error carries the Workload API's own
    /// answer to one more request (see [`IdentityError::Timeout`]).
    pub async fn connect(
        endpoint: Option<&str>,
        expected_id: Option<&SpiffeId>,
        timeout: Duration,
    ) -> Result<Self, IdentityError> {
        let endpoint = match endpoint {
            Some(endpoint) => endpoint.to_owned(),
            None => std::env::var(ENDPOINT_ENV).map_err(|_| IdentityError::NoEndpoint)?,
        };
        check_endpoint(&endpoint)?;

        let build = spiffe::X509Source::builder()
            .endpoint(&endpoint)
            .reconnect_backoff(MIN_BACKOFF, MAX_BACKOFF)
            .initial_sync_timeout(timeout)
            .build();
        // The outer timeout also bounds connection set-up, which the
        // source's own initial-sync timeout may not cover.
        let source = match tokio::time::timeout(timeout, build).await {
            Ok(Ok(source)) => Arc::new(source),
            Ok(Err(spiffe::X509SourceError::InitialSyncTimeout)) | Err(_) => {
                return Err(IdentityError::Timeout {
                    answer: last_answer(&endpoint).await,
                    endpoint,
                    waited: timeout,
                });
            }
            Ok(Err(err)) => return Err(IdentityError::WorkloadApi(err)),
        };

        let (svid, bundles) = match material(&source) {
            Ok(material) => material,
            Err(err) => {
                source.shutdown().await;
                return Err(err);
            }
        };
        let own_id = match expected_id {
            Some(expected) if expected != svid.spiffe_id() => {
                source.shutdown().await;
                return Err(IdentityError::IdMismatch {
                    expected: expected.clone(),
                    found: svid.spiffe_id().clone(),
                });
            }
            Some(expected) => expected.clone(),
            None => svid.spiffe_id().clone(),
        };
        let store = match SvidStore::new(own_id, svid, bundles) {
            Ok(store) => store,
            Err(err) => {
                source.shutdown().await;
                return Err(err);
            }
        };
        let updater = tokio::spawn(follow_updates(Arc::clone(&source), Arc::clone(&store)));
        Ok(Self {
            store,
            source,
            updater,
        })
    }

    /// The live identity.
    pub fn store(&self) -> Arc<SvidStore> {
        Arc::clone(&self.store)
    }

    /// Stops watching the Workload API. The store keeps its last SVID.
    pub async fn shutdown(self) {
        self.source.shutdown().await;
        // The update loop ends once the source is closed; waiting for it
        // ensures no rotation happens after shutdown returns.
        if let Err(err) = self.updater.await {
            tracing::warn!(error = %err, "workload api update task ended abnormally");
        }
    }
}

/// Rotates the store on every update until the source closes.
async fn follow_updates(source: Arc<spiffe::X509Source>, store: Arc<SvidStore>) {
    let mut updates = source.updated();
    while updates.changed().await.is_ok() {
        match material(&source) {
            // `rotate` logs its own refusals and keeps the old SVID.
            Ok((svid, bundles)) => {
                let _refused_and_logged = store.rotate(svid, bundles);
            }
            Err(err) => {
                tracing::warn!(reason = %err, "unusable workload api update, keeping the current svid");
            }
        }
    }
    tracing::debug!("workload api source closed");
}

/// The selected SVID and all bundles of the source, in this crate's types.
fn material(source: &spiffe::X509Source) -> Result<(Svid, BundleSet), IdentityError> {
    let x509 = source.svid().map_err(IdentityError::WorkloadApi)?;
    let chain = x509
        .cert_chain()
        .iter()
        .flat_map(|cert| cert.as_bytes().iter().copied())
        .collect::<Vec<u8>>();
    let svid = Svid::from_der(&chain, x509.private_key().as_bytes())?;

    let mut bundles = BundleSet::new();
    for (td, bundle) in source.bundle_set().map_err(IdentityError::WorkloadApi)?.iter() {
        let td = TrustDomain::parse(td.as_str())?;
        let roots = bundle
            .authorities()
            .iter()
            .map(|cert| rustls::pki_types::CertificateDer::from(cert.as_bytes().to_vec()))
            .collect();
        bundles.insert(Bundle::new(td, roots)?);
    }
    Ok((svid, bundles))
}

/// The Workload API's answer to one direct `FetchX509SVID` request, made
/// when the source gave up waiting: the source retries every failure
/// silently, so its timeout alone cannot say whether the socket is missing,
/// the caller is not registered or the server refused the stream.
///
/// The request is made with a raw gRPC call, not the `spiffe` client,
/// because that client folds a PERMISSION_DENIED whose message contains
/// "no identity issued" into a variant without the message: the operator
/// is shown the status code and the message exactly as the server sent them.
async fn last_answer(endpoint: &str) -> String {
    let request = async {
        let endpoint = spiffe::transport::Endpoint::parse(endpoint).map_err(|e| e.to_string())?;
        let channel = spiffe::transport::connect(&endpoint)
            .await
            .map_err(|e| with_causes(&e))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| with_causes(&e))?;
        let mut request = tonic::Request::new(Vec::new());
        // The header the specification requires of every Workload API call.
        request.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let path = http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID");
        let mut stream = grpc
            .server_streaming(request, path, RawCodec)
            .await
            .map_err(|status| status_line(&status))?
            .into_inner();
        match stream.message().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("the stream ended without an svid".to_owned()),
            Err(status) => Err(status_line(&status)),
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, request).await {
        Ok(Ok(())) => "it issued an svid only after the deadline".to_owned(),
        Ok(Err(answer)) => answer,
        Err(_) => format!("no answer within {ANSWER_TIMEOUT:?}"),
    }
}

/// `status <code>: <message>`, the code in the specification's snake case.
fn status_line(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut snake = String::with_capacity(code.len() + 4);
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    format!("status {snake}: {}", status.message())
}

/// An error and its causes, each once.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The bytes of a message as they are: the probe sends an empty
/// `X509SVIDRequest` (no fields: zero bytes) and needs no more of the answer
/// than whether one came.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf as _;
        let mut item = vec![0; src.remaining()];
        src.copy_to_slice(&mut item);
        Ok(Some(item))
    }
}

/// The endpoint forms of the SPIFFE Workload Endpoint specification, as
/// go-spiffe reads them (`unix:/path`, `unix:///path`, `tcp://IP:PORT`),
/// parsed by the same `spiffe` crate that then connects: what it accepts
/// here is what it dials.
fn check_endpoint(endpoint: &str) -> Result<(), IdentityError> {
    match spiffe::transport::Endpoint::parse(endpoint) {
        Ok(_) => Ok(()),
        Err(err) => Err(IdentityError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            reason: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        input: &'static str,
        /// `None`: accepted; `Some(reason)`: refused with this reason.
        expected: Option<&'static str>,
    }

    /// The forms go-spiffe accepts are accepted; the ones it refuses are
    /// refused, each with its reason.
    #[test]
    fn endpoint_forms() {
        let cases = [
            Case {
                name: "unix, empty authority",
                input: "unix:///run/spire/agent.sock",
                expected: None,
            },
            Case {
                name: "unix, no authority",
                input: "unix:/run/spire/agent.sock",
                expected: None,
            },
            Case {
                name: "tcp, ipv4",
                input: "tcp://127.0.0.1:8081",
                expected: None,
            },
            Case {
                name: "tcp, ipv6",
                input: "tcp://[::1]:8081",
                expected: None,
            },
            Case {
                name: "unix, host instead of a path",
                input: "unix://relative.sock",
                expected: Some("unix: endpoint socket URI must not include an authority"),
            },
            Case {
                name: "unix, no path",
                input: "unix://",
                expected: Some("unix: endpoint socket URI must include a path"),
            },
            Case {
                name: "bare path",
                input: "/run/agent.sock",
                expected: Some("endpoint socket is not a valid URI"),
            },
            Case {
                name: "tcp, dns name",
                input: "tcp://localhost:8081",
                expected: Some("tcp: endpoint socket URI host must be an IP address"),
            },
            Case {
                name: "tcp, no port",
                input: "tcp://127.0.0.1",
                expected: Some("tcp: endpoint socket URI must include a port"),
            },
            Case {
                name: "another scheme",
                input: "http://127.0.0.1:8081",
                expected: Some("endpoint socket URI scheme must be unix: or tcp:"),
            },
        ];
        for case in cases {
            let got = check_endpoint(case.input);
            match (case.expected, got) {
                (None, Ok(())) => {}
                (
                    Some(reason),
                    Err(IdentityError::BadEndpoint {
                        endpoint,
                        reason: got,
                    }),
                ) => {
                    assert_eq!(
                        (endpoint.as_str(), got.as_str()),
                        (case.input, reason),
                        "{}",
                        case.name
                    );
                }
                (expected, got) => panic!("{}: expected {expected:?}, got {got:?}", case.name),
            }
        }
    }
}
