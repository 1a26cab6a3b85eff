//! Publisher keys: the Ed25519 keys whose DSSE signatures the registry
//! accepts on releases. Registered and retired by operators only (over mTLS
//! with an operator SVID, or `soma release publisher add` on the data
//! directory); a retired key verifies nothing published after its
//! retirement. Every change is an audit event.

use soma_proto::v1 as pb;
use soma_release::PublisherKey;

use crate::error::RegistryError;
use crate::store::PublisherKeyRow;
use crate::{Actor, Registry, audit_event, now_nanos, seal, timestamp};

/// Longest publisher name.
const MAX_NAME: usize = 64;
/// Longest retirement reason.
const MAX_REASON: usize = 1024;

impl Registry {
    /// Registers a publisher key. Returns the key as stored; the same key
    /// registered again is `ALREADY_EXISTS`.
    pub async fn add_publisher_key(
        &self,
        actor: &Actor,
        name: &str,
        public_key_pem: &str,
    ) -> Result<pb::PublisherKey, RegistryError> {
        if actor.tenant_claims {
            return Err(RegistryError::OperatorRequired(
                "publisher keys are registered by operators only".into(),
            ));
        }
        check_name(name)?;
        let public_key = soma_sign::ed25519_public_key_from_pem(public_key_pem)
            .map_err(|e| RegistryError::invalid("public_key_invalid", format!("public_key_pem: {e}")))?;
        let key_id = soma_release::publisher_key_id(&public_key);
        let mut row = PublisherKeyRow {
            key_id: key_id.clone(),
            name: name.to_owned(),
            public_key: public_key.to_vec(),
            added_at: now_nanos(),
            added_by: actor.id.clone(),
            retired_at: None,
            retired_by: String::new(),
            retire_reason: String::new(),
            mac_key_id: String::new(),
            mac: Vec::new(),
        };
        self.seal_publisher(&mut row)?;
        let audit = self.outbox.audit(
            &audit_event(
                "",
                "publisher_key.add",
                &format!("publisher_key:{key_id}"),
                serde_json::json!({"key_id": key_id, "name": name, "actor": actor.id}),
                row.added_at,
            ),
            row.added_at,
        )?;
        if !self.store.add_publisher_key(&row, &audit).await? {
            return Err(RegistryError::AlreadyExists {
                reason: "publisher_key_exists",
                message: format!("publisher key {key_id} is already registered"),
            });
        }
        self.outbox.wake();
        tracing::info!(key_id, name, actor = %actor.id, "publisher key registered");
        Ok(publisher_proto(&row))
    }

    /// Every publisher key, each checked against its MAC.
    pub async fn publisher_keys(&self) -> Result<Vec<pb::PublisherKey>, RegistryError> {
        let rows = self.store.publisher_keys().await?;
        rows.iter()
            .map(|row| {
                self.check_publisher(row)?;
                Ok(publisher_proto(row))
            })
            .collect()
    }

    /// Retires a key, for good.
    pub async fn retire_publisher_key(
        &self,
        actor: &Actor,
        key_id: &str,
        reason: &str,
    ) -> Result<pb::PublisherKey, RegistryError> {
        if actor.tenant_claims {
            return Err(RegistryError::OperatorRequired(
                "publisher keys are retired by operators only".into(),
            ));
        }
        if reason.trim().is_empty() || reason.len() > MAX_REASON {
            return Err(RegistryError::invalid(
                "reason_invalid",
                format!("reason: required, at most {MAX_REASON} bytes"),
            ));
        }
        let mut row =
            self.store.publisher_key(key_id).await?.ok_or_else(|| {
                RegistryError::NotFound(format!("publisher key {key_id:?} is not registered"))
            })?;
        self.check_publisher(&row)?;
        if row.retired_at.is_some() {
            return Err(RegistryError::precondition(
                "publisher_key_retired",
                format!("publisher key {key_id} is already retired"),
            ));
        }
        let now = now_nanos();
        row.retired_at = Some(now);
        row.retired_by = actor.id.clone();
        row.retire_reason = reason.to_owned();
        self.seal_publisher(&mut row)?;
        let audit = self.outbox.audit(
            &audit_event(
                "",
                "publisher_key.retire",
                &format!("publisher_key:{key_id}"),
                serde_json::json!({"key_id": key_id, "reason": reason, "actor": actor.id}),
                now,
            ),
            now,
        )?;
        if !self.store.retire_publisher_key(&row, &audit).await? {
            return Err(RegistryError::precondition(
                "publisher_key_retired",
                format!("publisher key {key_id} is already retired"),
            ));
        }
        self.outbox.wake();
        tracing::info!(key_id, actor = %actor.id, "publisher key retired");
        Ok(publisher_proto(&row))
    }

    /// Records a change of the registry's own keyring (`soma release key
    /// add | promote | retire`) as an audit event, MACed with the keyring
    /// in force before the change (the one the running registry holds).
    pub async fn record_key_change(
        &self,
        actor: &Actor,
        action: &str,
        key_id: &str,
    ) -> Result<(), RegistryError> {
        let now = now_nanos();
        let event = self.outbox.audit(
            &audit_event(
                "",
                &format!("registry_key.{action}"),
                &format!("registry_key:{key_id}"),
                serde_json::json!({"key_id": key_id, "actor": actor.id}),
                now,
            ),
            now,
        )?;
        self.outbox.enqueue(&event).await
    }

    /// The stored key `key_id`, MAC checked, as verification sees it.
    pub(crate) async fn publisher(&self, key_id: &str) -> Result<Option<PublisherKey>, RegistryError> {
        let Some(row) = self.store.publisher_key(key_id).await? else {
            return Ok(None);
        };
        self.check_publisher(&row)?;
        let public_key: [u8; 32] =
            row.public_key
                .as_slice()
                .try_into()
                .map_err(|_| RegistryError::RowIntegrity {
                    table: PublisherKeyRow::TABLE,
                    key: row.key_id.clone(),
                })?;
        Ok(Some(PublisherKey {
            key_id: row.key_id,
            public_key,
            retired_at_nanos: row.retired_at,
        }))
    }

    fn seal_publisher(&self, row: &mut PublisherKeyRow) -> Result<(), RegistryError> {
        let (key_id, mac) = seal::mac(&self.keys, PublisherKeyRow::TABLE, &row.columns())?;
        row.mac_key_id = key_id.to_string();
        row.mac = mac;
        Ok(())
    }

    fn check_publisher(&self, row: &PublisherKeyRow) -> Result<(), RegistryError> {
        seal::check(
            &self.keys,
            PublisherKeyRow::TABLE,
            &row.key_id,
            &row.columns(),
            &row.mac_key_id,
            &row.mac,
        )
    }
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            "name_invalid",
            format!("name: 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '@'"),
        ))
    }
}

fn publisher_proto(row: &PublisherKeyRow) -> pb::PublisherKey {
    let pem = <&[u8; 32]>::try_from(row.public_key.as_slice())
        .ok()
        .map(public_key_pem)
        .unwrap_or_default();
    pb::PublisherKey {
        key_id: row.key_id.clone(),
        name: row.name.clone(),
        public_key_pem: pem,
        added_at: Some(timestamp(row.added_at)),
        retired_at: row.retired_at.map(timestamp),
        added_by: row.added_by.clone(),
    }
}

/// An Ed25519 public key as SubjectPublicKeyInfo PEM (RFC 8410: a fixed
/// 12-byte DER prefix, then the key).
fn public_key_pem(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key);
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
}
