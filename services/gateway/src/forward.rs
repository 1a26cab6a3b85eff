//! Forwarding admitted requests to the backends over mTLS.
//!
//! Each call carries a `VerifiedClaims` envelope signed with the gateway's
//! Ed25519 key for the target service only (audience = its SPIFFE ID), with a
//! lifetime of at most 60 s, plus the request id and the moderation
//! decision. Messages travel as encoded bytes: the edge transcodes JSON with
//! the descriptors, so the forwarder needs no generated types.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf as _, BufMut as _, Bytes};
use soma_auth::{CLAIMS_METADATA, ClaimsSigner, SIGNATURE_METADATA};
use soma_identity::{SpiffeId, SvidStore};
use soma_mesh::{MeshChannel, Peers, ServiceKind};
use soma_proto::v1::VerifiedClaims;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataMap};

use crate::context::{MODERATION_DECISION_METADATA, REQUEST_ID_HEADER, RequestContext};

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

/// One backend: its channel and the SPIFFE ID its envelopes are addressed to.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The mTLS channel (connects lazily, verifies the server's SPIFFE ID).
    pub channel: MeshChannel,
    /// The backend's SPIFFE ID.
    pub id: SpiffeId,
}

/// The backends the gateway forwards to, by gRPC service name.
#[derive(Clone, Debug)]
pub struct Backends {
    by_service: Arc<HashMap<&'static str, Backend>>,
    signer: Arc<ClaimsSigner>,
    ttl: Duration,
}

impl Backends {
    /// Channels to every configured peer (the gateway itself excluded: its
    /// own methods are served in-process).
    pub fn new(
        store: &Arc<SvidStore>,
        peers: &Peers,
        signer: ClaimsSigner,
        ttl: Duration,
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
            let channel = soma_mesh::channel(Arc::clone(store), addr.clone(), id.clone())?;
            by_service.insert(kind.grpc_name(), Backend { channel, id });
        }
        Ok(Self {
            by_service: Arc::new(by_service),
            signer: Arc::new(signer),
            ttl,
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
        let claims = VerifiedClaims {
            tenant: context.tenant.clone(),
            subject: context.subject.clone(),
            region: context.region.clone(),
            capabilities: context.capabilities.clone(),
            mfa: context.mfa,
            request_id: context.request_id.as_str().to_owned(),
            moderation_decision_id: context.moderation_decision_id.clone().unwrap_or_default(),
            ..Default::default()
        };
        let sealed = self
            .signer
            .sign(claims, audience, self.ttl, SystemTime::now())
            .map_err(|e| {
                tracing::error!(error = %e, "claims envelope not signed");
                tonic::Status::internal("the gateway could not seal the verified claims")
            })?;
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(CLAIMS_METADATA, BinaryMetadataValue::from_bytes(&sealed.encoded));
        metadata.insert_bin(
            SIGNATURE_METADATA,
            BinaryMetadataValue::from_bytes(&sealed.signature),
        );
        // Both values were validated as header-safe ASCII when accepted.
        if let Ok(v) = AsciiMetadataValue::try_from(context.request_id.as_str()) {
            metadata.insert(REQUEST_ID_HEADER, v);
        }
        if let Some(decision) = &context.moderation_decision_id
            && let Ok(v) = AsciiMetadataValue::try_from(decision.as_str())
        {
            metadata.insert(MODERATION_DECISION_METADATA, v);
        }
        Ok(metadata)
    }
}
