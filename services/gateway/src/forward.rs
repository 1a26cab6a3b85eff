//! Forwarding admitted requests to the backends over mTLS.
//!
//! Each call carries a `VerifiedClaims` envelope signed with the gateway's
//! Ed25519 key for the target service only (audience = its SPIFFE ID), with a
//! lifetime of at most 60 s, plus the request id and the moderation
//! decision. An envelope is reused for requests with the same claims while
//! it is younger than half its lifetime (see [`EnvelopeCache`]). Messages
//! travel as encoded bytes: the edge transcodes JSON with the descriptors,
//! so the forwarder needs no generated types.
//!
//! A backend may run as several instances of which one serves (Analytics
//! and its standby, `SOMA_PEER_ANALYTICS=a,b`): its [`Backend`] follows
//! their health ([`soma_mesh::PeerSet`]) and sends each call to the one
//! that serves, waiting out a switch ([`SWITCH_WAIT`]) and sending on a
//! call that an instance refused as a standby or that never reached it
//! ([`Backend::call`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf as _, BufMut as _, Bytes};
use soma_auth::{CLAIMS_METADATA, ClaimsSigner, SIGNATURE_METADATA, SignedClaims};
use soma_identity::{SpiffeId, SvidStore};
use soma_mesh::{MeshChannel, MeshConnector, PeerAddrs, Peers, ServiceKind};
use soma_proto::v1::VerifiedClaims;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataMap};

use crate::context::{MODERATION_DECISION_METADATA, REQUEST_ID_HEADER, RequestContext};
use crate::refusal::Refusal;
use crate::relay::UnaryRelay;

/// A codec passing encoded protobuf messages through unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// How long a call waits for an instance of a backend to serve when none
/// does (a standby taking over from an active instance that died), within
/// the call's own deadline: the edge answers such a call once the switch
/// is over rather than with an error meanwhile.
pub const SWITCH_WAIT: Duration = Duration::from_secs(3);

/// One backend: its channel, the edge's unary relay to each of its
/// instances, and the SPIFFE ID its envelopes are addressed to.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The mTLS channel (connects lazily, verifies the server's SPIFFE ID;
    /// with several instances, to the one that serves): server streams.
    pub channel: MeshChannel,
    /// Unary calls relayed by the edge (its own mTLS connection to each
    /// instance, dialed lazily by the same rules), in the order of the
    /// channel's instances.
    relays: Arc<[UnaryRelay]>,
    /// The backend's SPIFFE ID.
    pub id: SpiffeId,
}

impl Backend {
    /// A backend at `addrs` whose instances must present `id`, relaying
    /// replies of at most `max_reply_bytes`, each call waiting at most
    /// `timeout`.
    pub fn new(
        store: &Arc<SvidStore>,
        addrs: &PeerAddrs,
        id: SpiffeId,
        max_reply_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, soma_mesh::MeshError> {
        let channel = MeshChannel::new(Arc::clone(store), addrs, id.clone())?;
        let relays = addrs
            .iter()
            .map(|addr| {
                let connector = MeshConnector::new(Arc::clone(store), addr.clone(), id.clone())?;
                UnaryRelay::new(connector, max_reply_bytes, timeout)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            channel,
            relays: relays.into(),
            id,
        })
    }

    /// One unary call relayed to the backend: `message` (encoded) to
    /// `path` with `metadata`, within `deadline` (or the relay's timeout).
    ///
    /// With several instances, the call goes to the one that serves
    /// (waiting up to [`SWITCH_WAIT`] for one during a switch). A call
    /// refused by a standby (UNAVAILABLE, `standby`: it wrote nothing) or
    /// that never reached its instance is sent to the next one that serves;
    /// one that may have reached its instance is answered as it failed
    /// (the client retries, with the same event id where writes are
    /// idempotent), never sent twice here. Nothing is answered as done
    /// that an instance did not acknowledge.
    pub async fn call(
        &self,
        path: http::uri::PathAndQuery,
        metadata: http::HeaderMap,
        message: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Bytes, tonic::Status> {
        let Some(set) = self.channel.peer_set() else {
            return self.relays[0].call(path, metadata, message, deadline).await;
        };
        let started = tokio::time::Instant::now();
        let budget = deadline.unwrap_or(Duration::MAX);
        // Each instance at most twice: a switch back and forth is over.
        let mut attempts = 2 * set.len();
        loop {
            let left = budget.saturating_sub(started.elapsed());
            let index = set.serving(SWITCH_WAIT.min(left)).await;
            let left = deadline.map(|_| budget.saturating_sub(started.elapsed()));
            let failure = match self.relays[index]
                .try_call(path.clone(), metadata.clone(), message.clone(), left)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            let standby = failure.status.code() == tonic::Code::Unavailable
                && failure
                    .status
                    .metadata()
                    .get(soma_mesh::REASON_METADATA)
                    .is_some_and(|r| r.as_bytes() == b"standby");
            if failure.status.code() == tonic::Code::Unavailable {
                set.failed(index, &failure.status.message());
            }
            attempts -= 1;
            let untouched = standby || !failure.sent;
            if !untouched || attempts == 0 || deadline.is_some_and(|d| started.elapsed() >= d) {
                return Err(failure.status);
            }
            tracing::debug!(
                backend = %self.id,
                addr = %set.addr(index),
                standby,
                "call not taken by this instance; sending it to the one that serves"
            );
        }
    }

    /// Waits, up to [`SWITCH_WAIT`], for an instance that serves when none
    /// does, so that the channel's next call (a server stream) goes to it.
    pub async fn await_serving(&self) {
        if let Some(set) = self.channel.peer_set() {
            set.serving(SWITCH_WAIT).await;
        }
    }
}

/// The backends the gateway forwards to, by gRPC service name.
#[derive(Clone, Debug)]
pub struct Backends {
    by_service: Arc<HashMap<&'static str, Backend>>,
    signer: Arc<ClaimsSigner>,
    ttl: Duration,
    envelopes: Arc<EnvelopeCache>,
}

impl Backends {
    /// Channels to every configured peer (the gateway itself excluded: its
    /// own methods are served in-process); relayed replies are limited to
    /// `max_reply_bytes`, relayed calls to `timeout`.
    pub fn new(
        store: &Arc<SvidStore>,
        peers: &Peers,
        signer: ClaimsSigner,
        ttl: Duration,
        max_reply_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, soma_mesh::MeshError> {
        let mut by_service = HashMap::new();
        let td = store.own_id().trust_domain().clone();
        for (kind, addr) in [
            (ServiceKind::ToolRegistry, &peers.tool_registry),
            (ServiceKind::CapsuleRepo, &peers.capsule_repo),
            (ServiceKind::Analytics, &peers.analytics),
        ] {
            let Some(addr) = addr else { continue };
            let id = SpiffeId::from_parts(&td, &kind.spiffe_path()).map_err(|e| {
                soma_mesh::MeshError::Channel {
                    target: kind.name().to_owned(),
                    reason: e.to_string(),
                }
            })?;
            by_service.insert(
                kind.grpc_name(),
                Backend::new(store, addr, id, max_reply_bytes, timeout)?,
            );
        }
        Ok(Self {
            by_service: Arc::new(by_service),
            signer: Arc::new(signer),
            ttl,
            envelopes: Arc::new(EnvelopeCache::default()),
        })
    }

    /// The backend serving `service`, if configured.
    pub fn get(&self, service: &str) -> Option<&Backend> {
        self.by_service.get(service)
    }

    /// The metadata of a forwarded call: the signed claims envelope for
    /// `audience`, the request id and the moderation decision.
    pub fn metadata(
        &self,
        context: &RequestContext,
        audience: &SpiffeId,
    ) -> Result<MetadataMap, tonic::Status> {
        let key = EnvelopeKey {
            tenant: context.tenant.clone(),
            subject: context.subject.clone(),
            region: context.region.clone(),
            capabilities: context.capabilities.clone(),
            mfa: context.mfa,
            operator: context.operator,
            audience: audience.clone(),
        };
        let sealed = match &context.moderation {
            // Admitted by a moderation decision: sealed for this request
            // alone, with the decision, the digest of the message it was
            // made on, and the request id.
            Some(moderated) => {
                let claims = VerifiedClaims {
                    request_id: context.request_id.as_str().to_owned(),
                    moderation_decision_id: moderated.decision_id.clone(),
                    moderation_input_sha256: moderated.input_sha256.to_vec(),
                    ..key.claims()
                };
                self.signer
                    .sign(claims, audience, self.ttl, SystemTime::now())
                    .map(|signed| Sealed::from(&signed))
            }
            None => self
                .envelopes
                .sealed(&self.signer, key, self.ttl, SystemTime::now()),
        }
        .map_err(|e| {
            tracing::error!(error = %e, "claims envelope not signed");
            Refusal::without_reason(
                tonic::Code::Internal,
                "the gateway could not seal the verified claims",
            )
        })?;
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(CLAIMS_METADATA, sealed.claims);
        metadata.insert_bin(SIGNATURE_METADATA, sealed.signature);
        // Both values were validated as header-safe ASCII when accepted.
        if let Ok(v) = AsciiMetadataValue::try_from(context.request_id.as_str()) {
            metadata.insert(REQUEST_ID_HEADER, v);
        }
        if let Some(moderated) = &context.moderation
            && let Ok(v) = AsciiMetadataValue::try_from(moderated.decision_id.as_str())
        {
            metadata.insert(MODERATION_DECISION_METADATA, v);
        }
        // The trace context of the current span (the edge's request span),
        // so that the backend's server span joins the same trace.
        let mut trace = http::HeaderMap::new();
        soma_mesh::inject_trace_context(&tracing::Span::current(), &mut trace);
        for (name, value) in &trace {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::AsciiMetadataKey::from_bytes(name.as_str().as_bytes()),
                AsciiMetadataValue::try_from(value.as_bytes()),
            ) {
                metadata.insert(key, value);
            }
        }
        Ok(metadata)
    }
}

/// An envelope ready for the metadata of a call.
#[derive(Clone, Debug)]
struct Sealed {
    claims: BinaryMetadataValue,
    signature: BinaryMetadataValue,
}

impl From<&SignedClaims> for Sealed {
    fn from(signed: &SignedClaims) -> Self {
        Self {
            claims: BinaryMetadataValue::from_bytes(&signed.encoded),
            signature: BinaryMetadataValue::from_bytes(&signed.signature),
        }
    }
}

/// Envelopes most kept at once; a full cache is emptied and refilled.
const MAX_CACHED_ENVELOPES: usize = 4096;

/// Signed envelopes reused across requests with the same claims and
/// audience, so that the edge does not pay an Ed25519 signature per request.
///
/// Reuse gives a backend nothing a fresh envelope would not: a backend
/// accepts an envelope only over mTLS from the gateway's SPIFFE ID,
/// addressed to itself, before its expiry, and a reused one is handed only
/// to a request whose token passed the whole admission pipeline and whose
/// claims are exactly the envelope's. Reuse stops when an envelope is half
/// its lifetime old, so every receiver has at least that much left before
/// expiry. A reused envelope carries no request id (the request id travels
/// beside it, in `x-request-id`) and no moderation decision (a request
/// admitted by one is sealed alone).
#[derive(Debug, Default)]
pub(crate) struct EnvelopeCache {
    entries: std::sync::Mutex<HashMap<EnvelopeKey, Cached>>,
}

/// What an envelope says, besides its times, key id, request id and
/// moderation decision.
#[derive(Debug, PartialEq, Eq, Hash)]
struct EnvelopeKey {
    tenant: String,
    subject: String,
    region: String,
    capabilities: Vec<String>,
    mfa: bool,
    /// Part of the key: an operator's envelope must never be handed to a
    /// tenant request with otherwise equal claims, nor the reverse.
    operator: bool,
    audience: SpiffeId,
}

impl EnvelopeKey {
    /// The claims to sign (the signer sets audience, times and key id).
    fn claims(&self) -> VerifiedClaims {
        VerifiedClaims {
            tenant: self.tenant.clone(),
            subject: self.subject.clone(),
            region: self.region.clone(),
            capabilities: self.capabilities.clone(),
            mfa: self.mfa,
            operator: self.operator,
            ..Default::default()
        }
    }
}

#[derive(Debug)]
struct Cached {
    sealed: Sealed,
    reuse_until: SystemTime,
}

impl EnvelopeCache {
    /// The envelope of `key`'s claims for its audience: a cached one while
    /// younger than half of `ttl`, else a new one, signed now and cached.
    fn sealed(
        &self,
        signer: &ClaimsSigner,
        key: EnvelopeKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Sealed, soma_auth::AuthError> {
        if let Some(cached) = self.lock().get(&key)
            && now < cached.reuse_until
            // A clock stepped back never extends an envelope's reuse.
            && cached.reuse_until.duration_since(now).unwrap_or(Duration::MAX) <= ttl / 2
        {
            return Ok(cached.sealed.clone());
        }
        let sealed = Sealed::from(&signer.sign(key.claims(), &key.audience, ttl, now)?);
        if let Some(reuse_until) = now.checked_add(ttl / 2) {
            let mut entries = self.lock();
            if entries.len() >= MAX_CACHED_ENVELOPES {
                entries.clear();
            }
            entries.insert(
                key,
                Cached {
                    sealed: sealed.clone(),
                    reuse_until,
                },
            );
        }
        Ok(sealed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EnvelopeKey, Cached>> {
        // Entries are inserted whole: a panic elsewhere cannot leave one
        // half-written, so a poisoned map is still sound.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use soma_auth::ClaimsVerifier;

    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn key(tenant: &str, audience: &SpiffeId) -> EnvelopeKey {
        EnvelopeKey {
            tenant: tenant.to_owned(),
            subject: "alice".to_owned(),
            region: "eu-west-1".to_owned(),
            capabilities: vec!["ledger:read".to_owned()],
            mfa: false,
            operator: false,
            audience: audience.clone(),
        }
    }

    fn id(path: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://somastack.test{path}")).unwrap()
    }

    /// What the backend at `audience` makes of an envelope sent by the gateway.
    fn received(
        verifier: &ClaimsVerifier,
        sealed: &Sealed,
        now: SystemTime,
    ) -> Result<Option<VerifiedClaims>, soma_auth::AuthError> {
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(CLAIMS_METADATA, sealed.claims.clone());
        metadata.insert_bin(SIGNATURE_METADATA, sealed.signature.clone());
        verifier.verify(Some(&id("/svc/gateway")), &metadata.into_headers(), now)
    }

    #[test]
    fn an_envelope_is_reused_for_the_same_claims_until_half_its_lifetime() {
        let (signer, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let analytics = id("/svc/analytics");
        let verifier = ClaimsVerifier::new(
            id("/svc/gateway"),
            analytics.clone(),
            vec![("gateway-1".to_owned(), signer.public_key())],
        );
        let cache = EnvelopeCache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let bytes = |s: &Sealed| (s.claims.to_bytes().unwrap(), s.signature.to_bytes().unwrap());

        let first = cache.sealed(&signer, key("acme", &analytics), TTL, t0).unwrap();
        let seen = received(&verifier, &first, t0).unwrap().unwrap();
        assert_eq!(seen.tenant, "acme");
        assert_eq!(seen.request_id, "", "a reusable envelope names no request");
        assert_eq!(seen.expires_at - seen.issued_at, 30);

        // Same claims, same audience, younger than 15 s: the same bytes.
        let later = t0 + Duration::from_secs(14);
        let again = cache
            .sealed(&signer, key("acme", &analytics), TTL, later)
            .unwrap();
        assert_eq!(bytes(&again), bytes(&first));
        // Still valid at the backend for the other half of its lifetime.
        assert!(
            received(&verifier, &again, later + Duration::from_secs(15))
                .unwrap()
                .is_some()
        );

        // Other claims or another audience: another envelope.
        let other = cache
            .sealed(&signer, key("globex", &analytics), TTL, later)
            .unwrap();
        assert_ne!(bytes(&other), bytes(&first));
        assert_eq!(
            received(&verifier, &other, later).unwrap().unwrap().tenant,
            "globex"
        );
        let mut more = key("acme", &analytics);
        more.capabilities.push("ledger:export".to_owned());
        assert_ne!(
            bytes(&cache.sealed(&signer, more, TTL, later).unwrap()),
            bytes(&first)
        );
        // The operator flag alone makes another envelope, and it is signed.
        let mut as_operator = key("acme", &analytics);
        as_operator.operator = true;
        let operator_envelope = cache.sealed(&signer, as_operator, TTL, later).unwrap();
        assert_ne!(bytes(&operator_envelope), bytes(&first));
        assert!(
            received(&verifier, &operator_envelope, later)
                .unwrap()
                .unwrap()
                .operator
        );
        assert!(
            !received(&verifier, &again, later).unwrap().unwrap().operator,
            "the tenant's cached envelope is not an operator's"
        );
        let elsewhere = cache
            .sealed(&signer, key("acme", &id("/svc/tool-registry")), TTL, later)
            .unwrap();
        assert_ne!(bytes(&elsewhere), bytes(&first));
        assert!(
            received(&verifier, &elsewhere, later).is_err(),
            "addressed to another service"
        );

        // Half its lifetime old: signed anew.
        let half = t0 + Duration::from_secs(15);
        let renewed = cache.sealed(&signer, key("acme", &analytics), TTL, half).unwrap();
        assert_ne!(bytes(&renewed), bytes(&first));
        assert_eq!(
            received(&verifier, &renewed, half).unwrap().unwrap().issued_at,
            1_800_000_015
        );

        // A clock stepped back never stretches the reuse of the newest one.
        let back = half - Duration::from_secs(20);
        let fresh = cache.sealed(&signer, key("acme", &analytics), TTL, back).unwrap();
        assert_ne!(bytes(&fresh), bytes(&renewed));
    }
}
