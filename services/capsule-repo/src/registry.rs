//! The ToolRegistry, as the repository asks it over mTLS: the publisher
//! keys attestations are verified with, and the releases a bundle pins
//! (present, not revoked, the module the bundle names, and fully verified
//! by the registry before an installation becomes active or a run is
//! resolved — for a run, every step's release but the first one's, which
//! `ExecuteCapsuleStep` checks itself before it runs anything: see [`Verify`]).

use std::time::Duration;

use soma_capsule::{AttestationKey, Bundle, ToolRef};
use soma_mesh::MeshChannel;
use soma_proto::v1 as pb;
use soma_proto::v1::tool_registry_client::ToolRegistryClient;

use crate::error::RepoError;

/// Time one call to the registry may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A registered publisher key and the name of its publisher.
#[derive(Clone, Debug)]
pub(crate) struct NamedKey {
    pub publisher: String,
    pub key: AttestationKey,
}

/// Which releases of a bundle must also pass the registry's full
/// verification (`VerifyRelease`: row MAC, manifest digest, registry seal,
/// publisher signature and key, module bytes and digest), besides the
/// lookup every release gets (present, not revoked, the pinned module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verify {
    /// None: a submission (its releases are verified when installed).
    None,
    /// Every release: an installation about to become active.
    All,
    /// Every release but the first step's, which is neither looked up nor
    /// verified here: a run. The gateway's first backend call after the
    /// resolution is `ExecuteCapsuleStep` of the first step, which makes
    /// the same checks before it compiles or runs anything: the release's
    /// row read at that call (`release_missing`; `release_revoked`, however
    /// recently and on whichever replica), the module the capsule pins
    /// (`release_digest_mismatch`), the full verification
    /// (`release_unverified`) — the registry compiles only a release whose
    /// row passed it, and runs only the module it compiled then. A later
    /// step's execution comes after an earlier step has run, so later steps
    /// are looked up and verified here in full.
    AfterFirst,
}

/// The ToolRegistry client; absent when no registry peer is configured.
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    client: Option<ToolRegistryClient<MeshChannel>>,
}

impl Registry {
    pub(crate) fn new(channel: Option<MeshChannel>) -> Self {
        Self {
            client: channel.map(ToolRegistryClient::new),
        }
    }

    fn client(&self) -> Result<ToolRegistryClient<MeshChannel>, RepoError> {
        self.client
            .clone()
            .ok_or_else(|| RepoError::Registry("no tool registry peer is configured".into()))
    }

    /// Every publisher key the registry holds (retired ones included, with
    /// their retirement time: the verifier decides what counts).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn publisher_keys(&self) -> Result<Vec<NamedKey>, RepoError> {
        let mut client = self.client()?;
        let keys = call(client.list_publisher_keys(pb::ListPublisherKeysRequest {}))
            .await?
            .ok_or_else(|| RepoError::Registry("ListPublisherKeys answered NOT_FOUND".into()))?
            .keys;
        let mut named = Vec::with_capacity(keys.len());
        for key in keys {
            let public_key = match soma_sign::ed25519_public_key_from_pem(&key.public_key_pem) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(key_id = %key.key_id, error = %e, "registry publisher key is not a usable Ed25519 key; ignored");
                    continue;
                }
            };
            named.push(NamedKey {
                publisher: key.name,
                key: AttestationKey {
                    key_id: key.key_id,
                    public_key,
                    retired_at_nanos: key.retired_at.map(|t| {
                        t.seconds
                            .saturating_mul(1_000_000_000)
                            .saturating_add(i64::from(t.nanos))
                    }),
                },
            });
        }
        Ok(named)
    }

    /// Checks every tool release `bundle` pins: it exists
    /// (`release_missing`), is not revoked (`release_revoked`) and holds
    /// the module the bundle names (`release_digest_mismatch`). The
    /// releases `verify` names must pass the registry's full verification
    /// too (`release_revoked`, `release_unverified`).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn check_releases(&self, bundle: &Bundle, verify: Verify) -> Result<(), RepoError> {
        for (index, tool) in bundle.tools().iter().enumerate() {
            let full = match verify {
                Verify::None => false,
                Verify::All => true,
                Verify::AfterFirst if index == 0 => continue,
                Verify::AfterFirst => true,
            };
            self.check_release(tool, full).await?;
        }
        Ok(())
    }

    async fn check_release(&self, tool: &ToolRef, verify: bool) -> Result<(), RepoError> {
        let name = format!("{}@{}", tool.tool, tool.version.as_str());
        let mut client = self.client()?;
        let release = call(client.get_release(pb::GetReleaseRequest {
            tool: tool.tool.clone(),
            version: tool.version.as_str().to_owned(),
        }))
        .await?
        .ok_or_else(|| {
            RepoError::precondition(
                "release_missing",
                format!("release {name} the bundle pins is not in the tool registry"),
            )
        })?;
        if release.state == pb::ReleaseState::Revoked as i32 {
            return Err(revoked(&name));
        }
        if release.module_sha256.as_slice() != tool.module_sha256.as_slice() {
            return Err(RepoError::precondition(
                "release_digest_mismatch",
                format!(
                    "release {name} holds module {}, the bundle pins {}",
                    soma_sign::hex::encode(&release.module_sha256),
                    soma_sign::hex::encode(&tool.module_sha256)
                ),
            ));
        }
        if verify {
            let verified = call(client.verify_release(pb::VerifyReleaseRequest {
                tool: tool.tool.clone(),
                version: tool.version.as_str().to_owned(),
            }))
            .await?
            .ok_or_else(|| {
                RepoError::precondition(
                    "release_missing",
                    format!("release {name} the bundle pins is not in the tool registry"),
                )
            })?;
            if verified.failures.iter().any(|f| f == "revoked") {
                return Err(revoked(&name));
            }
            if !verified.valid {
                return Err(RepoError::precondition(
                    "release_unverified",
                    format!(
                        "release {name} failed the tool registry's verification: {}",
                        verified.failures.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn revoked(name: &str) -> RepoError {
    RepoError::precondition(
        "release_revoked",
        format!("release {name} the bundle pins is revoked"),
    )
}

/// One call: its answer, `None` for `NOT_FOUND`; a registry that does not
/// answer in time or fails is `UNAVAILABLE`, a release the registry finds
/// corrupt (`DATA_LOSS`) is `release_unverified`.
async fn call<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Option<T>, RepoError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(RepoError::Registry(format!(
            "no answer within {}",
            humantime::format_duration(CALL_TIMEOUT)
        ))),
        Ok(Ok(response)) => Ok(Some(response.into_inner())),
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
        Ok(Err(status)) if status.code() == tonic::Code::DataLoss => Err(RepoError::precondition(
            "release_unverified",
            format!(
                "the tool registry's row failed its integrity check: {}",
                status.message()
            ),
        )),
        Ok(Err(status)) => Err(RepoError::Registry(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}
