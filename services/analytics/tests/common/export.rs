//! Signed exports: a running Analytics with the identities the export tests
//! call it as, and everything a stream delivered.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these builders"
)]

use std::time::Duration;

use futures::StreamExt as _;
use soma_auth::ClaimsSigner;
use soma_identity::SpiffeId;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::Database;
use soma_testing::{Ca, Running, tenant_request};
use tonic::transport::Channel;

use super::{analytics_config, client, database, start_analytics, ts};

/// The export request of `tenant` (empty: the caller's) for `[from, to)`,
/// in whole seconds, without filters.
pub fn window(tenant: &str, from: i64, to: i64) -> pb::ExportRequest {
    pb::ExportRequest {
        tenant: tenant.to_owned(),
        from: ts(from),
        to: ts(to),
        tool: String::new(),
        service: String::new(),
    }
}

/// A running Analytics with the identities the tests call it as.
pub struct Env {
    pub ca: Ca,
    pub svc: Running,
    pub claims: ClaimsSigner,
    pub analytics_id: SpiffeId,
    /// The public half of the configured signing key.
    pub config_public_key: [u8; 32],
    pub origin: String,
}

impl Env {
    /// Analytics on `settings`, with `max_span` as its longest export
    /// window when given.
    pub async fn start(settings: &soma_store::StoreSettings, max_span: Option<Duration>) -> Self {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let mut config = analytics_config();
        if let Some(span) = max_span {
            config.max_export_span = span;
        }
        let config_public_key = soma_sign::Ed25519Signer::from_pkcs8_pem(
            soma_sign::KeyId::new("analytics-1").unwrap(),
            &config.signing_key_pem,
        )
        .unwrap()
        .public_key();
        let origin = config.ledger_origin.clone();
        let svc = start_analytics(&ca, settings, config, Some(&claims)).await;
        let analytics_id = ca.id("/svc/analytics");
        Self {
            ca,
            svc,
            claims,
            analytics_id,
            config_public_key,
            origin,
        }
    }

    /// A client under the SPIFFE ID `path`.
    pub fn client(&self, path: &str) -> AnalyticsClient<Channel> {
        client(&self.ca, &self.svc, path)
    }

    /// Records billing events as the tool registry (no claims).
    pub async fn record_billing(&self, events: Vec<pb::RecordBillingEventRequest>) {
        let client = self.client("/svc/tool-registry");
        let results: Vec<_> = futures::stream::iter(events)
            .map(|e| {
                let mut client = client.clone();
                async move { client.record_billing_event(e).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for r in results {
            r.unwrap();
        }
    }

    /// Records a capsule run as the gateway with `tenant`'s claims.
    pub async fn record_run_as_tenant(&self, tenant: &str, run: pb::RecordCapsuleRunRequest) {
        let request = tenant_request(
            &self.claims,
            &self.analytics_id,
            tenant,
            &["analytics:ingest"],
            run,
        );
        self.client("/svc/gateway")
            .record_capsule_run(request)
            .await
            .unwrap();
    }

    /// Records a capsule run as the tool registry (tenant in the body).
    pub async fn record_run_as_registry(&self, run: pb::RecordCapsuleRunRequest) {
        self.client("/svc/tool-registry")
            .record_capsule_run(run)
            .await
            .unwrap();
    }

    /// An export request from the gateway with `tenant`'s claims.
    pub fn as_tenant(
        &self,
        tenant: &str,
        caps: &[&str],
        r: pb::ExportRequest,
    ) -> tonic::Request<pb::ExportRequest> {
        tenant_request(&self.claims, &self.analytics_id, tenant, caps, r)
    }

    /// The export of `kind` asked by the SPIFFE ID `from_path`.
    pub async fn export(
        &self,
        kind: Kind,
        from_path: &str,
        request: tonic::Request<pb::ExportRequest>,
    ) -> Result<Collected, tonic::Status> {
        let mut client = self.client(from_path);
        let stream = match kind {
            Kind::Billing => client.export_billing_ledger(request).await?,
            Kind::Runs => client.export_capsule_runs(request).await?,
        }
        .into_inner();
        Ok(collect(stream).await)
    }

    /// The one verification key the service lists.
    pub async fn verification_key(&self) -> pb::VerificationKey {
        let mut keys = self
            .client("/operator/alice")
            .list_verification_keys(pb::ListVerificationKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys.remove(0)
    }

    /// A direct SQL connection to the service's database.
    pub async fn sql(&self, db: &soma_store::testing::TestDb) -> Database {
        database(&db.settings).await
    }
}

/// Which export.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Billing,
    Runs,
}

/// Everything a stream delivered.
pub struct Collected {
    /// Each data chunk, in order.
    pub chunks: Vec<Vec<u8>>,
    /// The signature message, when one came.
    pub signature: Option<pb::ExportSignature>,
    /// The error that ended the stream, if any.
    pub error: Option<tonic::Status>,
    /// Whether any message carried both data and a signature, or a data
    /// message followed the signature.
    pub malformed: bool,
}

impl Collected {
    /// The exported document's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// The complete, signed export: its bytes, its signature and the
    /// number of data chunks; panics on an error or a missing signature.
    pub fn signed(self) -> (Vec<u8>, pb::ExportSignature, usize) {
        assert!(self.error.is_none(), "{:?}", self.error);
        assert!(!self.malformed, "signature must come alone, last");
        let bytes = self.bytes();
        (
            bytes,
            self.signature.expect("a signature message"),
            self.chunks.len(),
        )
    }

    /// The exported document.
    pub fn document(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes()).unwrap()
    }
}

/// Reads `stream` to its end.
pub async fn collect(mut stream: tonic::Streaming<pb::ExportChunk>) -> Collected {
    let mut out = Collected {
        chunks: Vec::new(),
        signature: None,
        error: None,
        malformed: false,
    };
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if out.signature.is_some() || (chunk.signature.is_some() && !chunk.data.is_empty()) {
                    out.malformed = true;
                }
                if let Some(sig) = chunk.signature {
                    out.signature = Some(sig);
                } else {
                    out.chunks.push(chunk.data);
                }
            }
            Ok(None) => return out,
            Err(status) => {
                out.error = Some(status);
                return out;
            }
        }
    }
}

/// The event ids of an exported document's rows, in order.
pub fn event_ids(document: &serde_json::Value) -> Vec<String> {
    document["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect()
}
