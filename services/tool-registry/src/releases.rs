//! Releases: publish, read, verify, revoke.
//!
//! Publishing checks, in order, everything a package registry must before
//! a byte is written: the DSSE envelope's type and its one signature, the
//! manifest (RFC 8785 canonical, exact members and types), the module
//! against the manifest (size, SHA-256), the module's shape (no imports;
//! checked without compiling it), the limits against the sandbox's
//! ceilings, the publisher key (registered, MAC intact, not retired) and
//! its strict Ed25519 signature. Then, inside one transaction that has the
//! tool's releases in view: the same version with other bytes is
//! `ALREADY_EXISTS`; a version not above the tool's highest (revoked ones
//! included) is `FAILED_PRECONDITION` — no rollback, no freeze. The release
//! is sealed (HMAC-SHA256 over the manifest digest with the registry's
//! primary key), MACed as a row, stored with its module (content-addressed)
//! and its audit event.

use soma_proto::v1 as pb;
use soma_release::{Manifest, Stored, Version};
use soma_sign::{DsseEnvelope, DsseSignature};

use crate::error::RegistryError;
use crate::store::{ACTIVE, Published, REVOKED, ReleaseRow};
use soma_proto::json;

use crate::{Actor, Registry, audit_event, now_nanos, seal, timestamp};

/// Longest revocation reason.
const MAX_REASON: usize = 1024;
/// Releases per page of `ListReleases` at most.
const MAX_PAGE: usize = 100;

impl Registry {
    /// `PublishRelease`.
    pub async fn publish(
        &self,
        actor: &Actor,
        request: pb::PublishReleaseRequest,
    ) -> Result<pb::Release, RegistryError> {
        let envelope = request
            .envelope
            .ok_or_else(|| RegistryError::invalid("envelope_missing", "envelope: required"))?;
        let envelope = envelope_of(envelope);
        // DSSE: authenticate before parsing. The envelope's shape, the
        // publisher key (registered, MAC intact, not retired) and its strict
        // signature come first; only a payload a registered publisher signed
        // is parsed as a manifest.
        let keyid = match envelope.signatures.as_slice() {
            [signature] => signature.keyid.clone(),
            _ => String::new(),
        };
        let now = now_nanos();
        let publisher = match self.publisher(&keyid).await? {
            Some(publisher) => publisher,
            // Unknown key: the shape checks still answer first.
            None => soma_release::PublisherKey {
                key_id: String::new(),
                public_key: [0; 32],
                retired_at_nanos: None,
            },
        };
        let manifest = soma_release::verify_publication(&envelope, &publisher, now).map_err(release_error)?;
        if request.tool != manifest.tool() {
            return Err(RegistryError::invalid(
                "manifest_tool_mismatch",
                format!(
                    "tool {:?} is not the manifest's tool {:?}",
                    request.tool,
                    manifest.tool()
                ),
            ));
        }
        if !request.version.is_empty() && request.version != manifest.version().as_str() {
            return Err(RegistryError::invalid(
                "manifest_version_mismatch",
                format!(
                    "version {:?} is not the manifest's version {:?}",
                    request.version,
                    manifest.version().as_str()
                ),
            ));
        }
        if manifest.module_size() > self.max_module_bytes {
            return Err(RegistryError::invalid(
                "module_too_large",
                format!(
                    "module_size {} is above the registry's limit of {} bytes",
                    manifest.module_size(),
                    self.max_module_bytes
                ),
            ));
        }
        manifest.check_module(&request.module).map_err(release_error)?;
        self.sandbox_config
            .inspect(&request.module, manifest.entrypoint())
            .map_err(|e| RegistryError::Invalid {
                reason: e.reason(),
                message: format!("module: {e}"),
            })?;
        self.check_limits(&manifest)?;

        let digest = manifest.digest();
        let (hmac_key_id, hmac) = soma_release::seal(&self.keys, &digest);
        let mut row = ReleaseRow {
            tool: manifest.tool().to_owned(),
            version: manifest.version().as_str().to_owned(),
            manifest: manifest.canonical_bytes().to_vec(),
            manifest_sha256: digest.to_vec(),
            module_sha256: manifest.module_sha256().to_vec(),
            module_size: i64::try_from(manifest.module_size()).unwrap_or(i64::MAX),
            hmac_key_id: hmac_key_id.to_string(),
            hmac: hmac.to_vec(),
            envelope: envelope.to_json(),
            publisher_key_id: publisher.key_id.clone(),
            state: ACTIVE.to_owned(),
            published_at: now,
            published_by: actor.id.clone(),
            tenant: actor.tenant.clone(),
            revoked_at: None,
            revoked_by: String::new(),
            revocation_reason: String::new(),
            mac_key_id: String::new(),
            mac: Vec::new(),
        };
        self.seal_release(&mut row)?;
        let audit = self.outbox.audit(
            &audit_event(
                &actor.tenant,
                "release.publish",
                &format!("tool:{}", row.name()),
                serde_json::json!({
                    "tool": row.tool,
                    "version": row.version,
                    "manifest_sha256": soma_sign::hex::encode(&row.manifest_sha256),
                    "module_sha256": soma_sign::hex::encode(&row.module_sha256),
                    "publisher_key_id": row.publisher_key_id,
                    "actor": actor.id,
                    "request_id": actor.request_id,
                }),
                now,
            ),
            now,
        )?;

        let version = manifest.version().clone();
        let _serialized = self.publishing.lock().await;
        let published = self
            .store
            .publish(&row, &request.module, &audit, |existing| {
                same_or_greater(&row, &version, existing)
            })
            .await?;
        match published {
            Published::New => {
                self.verified.forget_newest(&row.tool);
                self.outbox.wake();
                tracing::info!(release = %row.name(), publisher = %row.publisher_key_id, actor = %actor.id, "release published");
                self.release_proto(&row)
            }
            Published::Existing(same) => self.release_proto(&same),
        }
    }

    /// `GetRelease`.
    pub async fn get(&self, tool: &str, version: &str) -> Result<pb::Release, RegistryError> {
        let row = self.stored(tool, version).await?;
        self.release_proto(&row)
    }

    /// `ListReleases`: newest version first, paged by version.
    pub async fn list(
        &self,
        tool: &str,
        page: Option<pb::PageRequest>,
    ) -> Result<pb::ListReleasesResponse, RegistryError> {
        check_tool(tool)?;
        let page = page.unwrap_or_default();
        let size = match page.page_size {
            0 => MAX_PAGE,
            n => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        };
        let after = match page.page_token.as_str() {
            "" => None,
            token => Some(Version::parse(token).map_err(|_| {
                RegistryError::invalid(
                    "page_token_invalid",
                    "page.page_token is not a token this registry gave",
                )
            })?),
        };
        let mut rows = Vec::new();
        for row in self.store.releases(Some(tool)).await? {
            self.check_release(&row)?;
            let version = parse_stored_version(&row)?;
            if after.as_ref().is_none_or(|after| version < *after) {
                rows.push((version, row));
            }
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0));
        let more = rows.len() > size;
        rows.truncate(size);
        let next_page_token = if more {
            rows.last().map(|(v, _)| v.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListReleasesResponse {
            releases: rows
                .iter()
                .map(|(_, row)| self.release_proto(row))
                .collect::<Result<_, _>>()?,
            next_page_token,
        })
    }

    /// `VerifyRelease`: every check, from the stored bytes, each failure
    /// named.
    pub async fn verify(
        &self,
        tool: &str,
        version: &str,
    ) -> Result<pb::VerifyReleaseResponse, RegistryError> {
        check_tool(tool)?;
        let Some(row) = self.store.release(tool, version).await? else {
            return Err(RegistryError::NotFound(format!(
                "release {tool}@{version} does not exist"
            )));
        };
        let failures = self.failures(&row).await?;
        Ok(pb::VerifyReleaseResponse {
            valid: failures.is_empty(),
            failures,
        })
    }

    /// The names of every check `row` fails: its row MAC, then the
    /// release's own checks over the stored manifest, envelope, seal,
    /// publisher key and module bytes.
    pub(crate) async fn failures(&self, row: &ReleaseRow) -> Result<Vec<String>, RegistryError> {
        let mut failures = Vec::new();
        if self.check_release(row).is_err() {
            failures.push("row_mac".to_owned());
        }
        let envelope = match DsseEnvelope::from_json(&row.envelope) {
            Ok(envelope) => Some(envelope),
            Err(_) => {
                failures.push("envelope_invalid".to_owned());
                None
            }
        };
        let publisher = match envelope.as_ref().and_then(|e| e.signatures.first()) {
            Some(signature) => match self.publisher(&signature.keyid).await {
                Ok(key) => key,
                Err(RegistryError::RowIntegrity { .. }) => {
                    failures.push("publisher_row_mac".to_owned());
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let module = self.store.module(&row.module_sha256).await?;
        if module.is_none() {
            failures.push("module_missing".to_owned());
        }
        if let Some(envelope) = &envelope {
            let stored = Stored {
                manifest: &row.manifest,
                manifest_sha256: &row.manifest_sha256,
                hmac_key_id: &row.hmac_key_id,
                hmac: &row.hmac,
                envelope,
                published_at_nanos: row.published_at,
                revoked: row.state != ACTIVE,
                module: module.as_deref(),
            };
            failures.extend(
                soma_release::verify(&stored, publisher.as_ref(), &self.keys)
                    .iter()
                    .map(|f| f.name().to_owned()),
            );
            // The row's own copy of the module digest must be the manifest's.
            if let Ok(manifest) = Manifest::parse(&row.manifest)
                && (manifest.module_sha256().as_slice() != row.module_sha256.as_slice()
                    || i64::try_from(manifest.module_size()).ok() != Some(row.module_size)
                    || manifest.tool() != row.tool
                    || manifest.version().as_str() != row.version)
            {
                failures.push("row_manifest_mismatch".to_owned());
            }
        }
        failures.dedup();
        Ok(failures)
    }

    /// `RevokeRelease`: final; the release never runs again.
    pub async fn revoke(
        &self,
        actor: &Actor,
        tool: &str,
        version: &str,
        reason: &str,
    ) -> Result<pb::Release, RegistryError> {
        if reason.trim().is_empty() || reason.len() > MAX_REASON {
            return Err(RegistryError::invalid(
                "reason_invalid",
                format!("reason: required, at most {MAX_REASON} bytes"),
            ));
        }
        let mut row = self.stored(tool, version).await?;
        if row.tenant != actor.tenant && !actor.operator {
            return Err(RegistryError::Denied {
                reason: "tool_owned_by_another_tenant",
                message: format!(
                    "release {} belongs to another tenant: only its tenant or an operator revokes it",
                    row.name()
                ),
            });
        }
        if row.state == REVOKED {
            return Err(RegistryError::precondition(
                "release_revoked",
                format!("release {} is already revoked; revocation is final", row.name()),
            ));
        }
        let now = now_nanos();
        row.state = REVOKED.to_owned();
        row.revoked_at = Some(now);
        row.revoked_by = actor.id.clone();
        row.revocation_reason = reason.to_owned();
        self.seal_release(&mut row)?;
        let audit = self.outbox.audit(
            &audit_event(
                &actor.tenant,
                "release.revoke",
                &format!("tool:{}", row.name()),
                serde_json::json!({
                    "tool": row.tool,
                    "version": row.version,
                    "module_sha256": soma_sign::hex::encode(&row.module_sha256),
                    "reason": reason,
                    "actor": actor.id,
                    "request_id": actor.request_id,
                }),
                now,
            ),
            now,
        )?;
        // Out of the caches first: from here on nothing runs it.
        self.forget_verified(&row);
        if !self.store.revoke(&row, &audit).await? {
            return Err(RegistryError::precondition(
                "release_revoked",
                format!("release {} is already revoked; revocation is final", row.name()),
            ));
        }
        self.outbox.wake();
        tracing::info!(release = %row.name(), actor = %actor.id, "release revoked");
        self.release_proto(&row)
    }

    /// The stored release `tool@version`, its row MAC checked.
    pub(crate) async fn stored(&self, tool: &str, version: &str) -> Result<ReleaseRow, RegistryError> {
        check_tool(tool)?;
        let row = self
            .store
            .release(tool, version)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("release {tool}@{version} does not exist")))?;
        self.check_release(&row)?;
        Ok(row)
    }

    pub(crate) fn check_release(&self, row: &ReleaseRow) -> Result<(), RegistryError> {
        seal::check(
            &self.keys,
            ReleaseRow::TABLE,
            &row.name(),
            &row.columns(),
            &row.mac_key_id,
            &row.mac,
        )
    }

    fn seal_release(&self, row: &mut ReleaseRow) -> Result<(), RegistryError> {
        let (key_id, mac) = seal::mac(&self.keys, ReleaseRow::TABLE, &row.columns())?;
        row.mac_key_id = key_id.to_string();
        row.mac = mac;
        Ok(())
    }

    fn check_limits(&self, manifest: &Manifest) -> Result<(), RegistryError> {
        let ceilings = &self.sandbox_config;
        let limits = manifest.limits();
        let over = if limits.fuel > ceilings.max_fuel {
            Some(format!(
                "limits.fuel {} is above the sandbox's {}",
                limits.fuel, ceilings.max_fuel
            ))
        } else if limits.memory_bytes > ceilings.max_memory_bytes {
            Some(format!(
                "limits.memory_bytes {} is above the sandbox's {}",
                limits.memory_bytes, ceilings.max_memory_bytes
            ))
        } else if u128::from(limits.deadline_ms) > ceilings.max_deadline.as_millis() {
            Some(format!(
                "limits.deadline_ms {} is above the sandbox's {}",
                limits.deadline_ms,
                ceilings.max_deadline.as_millis()
            ))
        } else {
            None
        };
        match over {
            Some(message) => Err(RegistryError::invalid("limits_exceed_sandbox", message)),
            None => Ok(()),
        }
    }

    /// A stored release as the API shows it.
    pub(crate) fn release_proto(&self, row: &ReleaseRow) -> Result<pb::Release, RegistryError> {
        let manifest = soma_sign::jcs::parse_strict(&row.manifest)
            .ok()
            .and_then(|v| json::to_struct(&v).ok().flatten());
        let envelope = DsseEnvelope::from_json(&row.envelope).ok();
        let signature = envelope.as_ref().and_then(|e| e.signatures.first());
        Ok(pb::Release {
            tool: row.tool.clone(),
            version: row.version.clone(),
            manifest,
            manifest_sha256: row.manifest_sha256.clone(),
            module_sha256: row.module_sha256.clone(),
            hmac: row.hmac.clone(),
            hmac_key_id: row.hmac_key_id.clone(),
            ed25519_signature: signature.map(|s| s.sig.clone()).unwrap_or_default(),
            ed25519_key_id: row.publisher_key_id.clone(),
            state: match row.state.as_str() {
                ACTIVE => pb::ReleaseState::Active,
                REVOKED => pb::ReleaseState::Revoked,
                _ => pb::ReleaseState::Unspecified,
            } as i32,
            published_at: Some(timestamp(row.published_at)),
            revocation_reason: row.revocation_reason.clone(),
            module_size: u64::try_from(row.module_size).unwrap_or(0),
            envelope: envelope.map(envelope_proto),
            revoked_at: row.revoked_at.map(timestamp),
            published_by: row.published_by.clone(),
        })
    }
}

/// The publish rules, seen inside the transaction: the same release again
/// is an idempotent retry; the same version with other bytes, or a
/// version not above the highest, is refused.
fn same_or_greater(
    row: &ReleaseRow,
    version: &Version,
    existing: &[ReleaseRow],
) -> Result<Option<ReleaseRow>, RegistryError> {
    // A tool belongs to the tenant that published its first release: no
    // other tenant can publish a version of it (a name taken over) nor, by
    // publishing a higher one, freeze its owner out.
    if let Some(owner) = existing.first().map(|r| &r.tenant)
        && *owner != row.tenant
    {
        return Err(RegistryError::Denied {
            reason: "tool_owned_by_another_tenant",
            message: format!("tool {} belongs to another tenant", row.tool),
        });
    }
    if let Some(same) = existing.iter().find(|r| r.version == row.version) {
        if same.manifest == row.manifest
            && same.module_sha256 == row.module_sha256
            && same.envelope == row.envelope
        {
            return Ok(Some(same.clone()));
        }
        return Err(RegistryError::AlreadyExists {
            reason: "version_exists",
            message: format!(
                "release {} exists with other bytes; a published version never changes",
                row.name()
            ),
        });
    }
    let mut highest: Option<Version> = None;
    for r in existing {
        let v = parse_stored_version(r)?;
        if highest.as_ref().is_none_or(|h| v > *h) {
            highest = Some(v);
        }
    }
    if let Some(highest) = highest
        && *version <= highest
    {
        return Err(RegistryError::precondition(
            "version_not_greater",
            format!(
                "version {} of {} is not greater than its highest published version {}",
                version.as_str(),
                row.tool,
                highest.as_str()
            ),
        ));
    }
    Ok(None)
}

fn parse_stored_version(row: &ReleaseRow) -> Result<Version, RegistryError> {
    Version::parse(&row.version).map_err(|_| RegistryError::RowIntegrity {
        table: ReleaseRow::TABLE,
        key: row.name(),
    })
}

/// A tool name as the manifest allows it (so a lookup never reaches the
/// database with anything else).
pub(crate) fn check_tool(tool: &str) -> Result<(), RegistryError> {
    let ok = !tool.is_empty()
        && tool.len() <= 64
        && tool.as_bytes()[0].is_ascii_lowercase() | tool.as_bytes()[0].is_ascii_digit()
        && tool
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            "tool_invalid",
            format!("tool {tool:?}: 1 to 64 of [a-z0-9._-], starting with a letter or digit"),
        ))
    }
}

/// A `ReleaseError` with its own reason: `PERMISSION_DENIED` for the
/// publisher and its signature, `INVALID_ARGUMENT` for everything else.
pub(crate) fn release_error(e: soma_release::ReleaseError) -> RegistryError {
    let reason = e.reason();
    let message = e.to_string();
    match reason {
        "publisher_unknown" | "publisher_retired" | "signature_invalid" => {
            RegistryError::Signature { reason, message }
        }
        _ => RegistryError::Invalid { reason, message },
    }
}

fn envelope_of(e: pb::DsseEnvelope) -> DsseEnvelope {
    DsseEnvelope {
        payload_type: e.payload_type,
        payload: e.payload,
        signatures: e
            .signatures
            .into_iter()
            .map(|s| DsseSignature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    }
}

fn envelope_proto(e: DsseEnvelope) -> pb::DsseEnvelope {
    pb::DsseEnvelope {
        payload_type: e.payload_type,
        payload: e.payload,
        signatures: e
            .signatures
            .into_iter()
            .map(|s| pb::DsseSignature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    }
}
