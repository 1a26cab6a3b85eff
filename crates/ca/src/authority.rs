//! The development authority: the X509-SVIDs and JWT-SVIDs it signs with
//! its active slot, the bundles it publishes, and the rotation of its slots
//! (see [`crate::keys`] for the files and the schedule).
//!
//! Every open, including the one right after creation, reads the files back
//! and checks them, so there is a single code path from disk to signing key.
//! The key material in memory is one immutable snapshot behind an `Arc`,
//! swapped whole after a rotation: an issuance that has started finishes
//! with the slot it started with.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use soma_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::entries::EntryStore;
use crate::error::CaError;
use crate::files::{self, PRIVATE_FILE, PUBLIC_FILE};
use crate::jwt::{self, IssuedJwt, JwtPublicKey, ValidatedJwt};
use crate::keys::{self, KeySet, Layout, Slot};
use crate::pem;

/// How far `notBefore` is set in the past, so that a peer whose clock is a
/// little behind still accepts a certificate minted a moment ago.
pub(crate) const BACKDATE: Duration = Duration::from_secs(10);

/// Length of certificate serial numbers, in bytes (128 bits).
pub(crate) const SERIAL_LEN: usize = 16;

/// Organization name written in the subject of the root and of every SVID.
const ORGANIZATION: &str = "SomaStack";

/// Shortest root lifetime accepted: the schedule (prepare at 1/2, activate
/// at 5/6) must leave whole seconds between its steps.
const MIN_CA_TTL: Duration = Duration::from_secs(6);

/// Settings of an authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthorityOptions {
    /// Lifetime of each new root and its JWT key. The next slot is prepared
    /// at half of it and activated at five sixths.
    pub ca_ttl: Duration,
}

impl Default for AuthorityOptions {
    /// 24 hours, SPIRE's default `ca_ttl`.
    fn default() -> Self {
        Self {
            ca_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Where a slot stands in its rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Signs every SVID and JWT-SVID.
    Active,
    /// Published in the bundles; signs once activated.
    Prepared,
    /// Signs nothing any more; published until it expires.
    Retired,
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Prepared => "prepared",
            Self::Retired => "retired",
        })
    }
}

/// One root and its JWT key, as `soma ca show` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Its state.
    pub state: SlotState,
    /// The root's serial number, lowercase hex.
    pub serial: String,
    /// The root's `notAfter`, which is also the JWT key's expiry.
    pub not_after: SystemTime,
    /// The `kid` of the JWT key.
    pub jwt_kid: String,
}

/// The development authority: its slots under a directory.
pub struct Authority {
    trust_domain: TrustDomain,
    data_dir: PathBuf,
    layout: Layout,
    options: AuthorityOptions,
    keys: RwLock<Arc<KeySet>>,
    rng: SystemRandom,
}

impl Authority {
    /// [`Authority::open_or_create_with`] with the default options.
    pub fn open_or_create(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        Self::open_or_create_with(dir, trust_domain, AuthorityOptions::default())
    }

    /// Opens the authority under `DIR/ca` or creates it: a self-signed ECDSA
    /// P-256 root for `trust_domain` (basicConstraints CA:true, pathLen 0,
    /// critical; keyUsage keyCertSign|cRLSign, critical; URI SAN
    /// `spiffe://<td>`; valid `options.ca_ttl`) and an ES256 JWT key. Keys
    /// are written as PKCS#8 PEM with mode 0600.
    ///
    /// A directory that already holds a root is reused as is, and any step
    /// of the rotation schedule that came due while nothing ran is taken now
    /// (an expired root is replaced). Reopening it with another trust domain
    /// is an error, and so is a key that does not match its certificate, or
    /// anything this authority would not have written.
    pub fn open_or_create_with(
        dir: &Path,
        trust_domain: &TrustDomain,
        options: AuthorityOptions,
    ) -> Result<Self, CaError> {
        check_ca_ttl(options.ca_ttl)?;
        let layout = Layout::new(dir);
        let keys = {
            let _lock = layout.lock()?;
            if !layout.cert().exists() {
                keys::create_first(&layout, trust_domain, options.ca_ttl)?;
            }
            keys::load(&layout, trust_domain)?
        };
        let authority = Self::new(dir, trust_domain, layout, options, keys);
        authority.advance(SystemTime::now())?;
        Ok(authority)
    }

    /// Opens the authority under `DIR/ca` like [`Authority::open_or_create`],
    /// but never creates one and takes no step of the schedule: a missing
    /// root is an [`CaError::Io`] (not found).
    pub fn open_existing(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        let layout = Layout::new(dir);
        if !layout.cert().exists() {
            let path = layout.cert();
            return Err(CaError::io("cannot read", &path)(
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let keys = {
            let _lock = layout.lock()?;
            keys::load(&layout, trust_domain)?
        };
        Ok(Self::new(
            dir,
            trust_domain,
            layout,
            AuthorityOptions::default(),
            keys,
        ))
    }

    /// The same authority with other options (the lifetime of the roots it
    /// prepares from now on).
    pub fn with_options(mut self, options: AuthorityOptions) -> Result<Self, CaError> {
        check_ca_ttl(options.ca_ttl)?;
        self.options = options;
        Ok(self)
    }

    fn new(
        dir: &Path,
        trust_domain: &TrustDomain,
        layout: Layout,
        options: AuthorityOptions,
        keys: KeySet,
    ) -> Self {
        log_loaded(&keys, false);
        Self {
            trust_domain: trust_domain.clone(),
            data_dir: dir.to_owned(),
            layout,
            options,
            keys: RwLock::new(Arc::new(keys)),
            rng: SystemRandom::new(),
        }
    }

    /// Takes the step of the rotation schedule that is due at `now`, if any,
    /// and picks up every change another process (`soma ca prepare`,
    /// `soma ca activate`) made on disk. Returns whether the published
    /// bundles changed.
    ///
    /// Steps: no prepared slot and half the active root's lifetime gone →
    /// prepare one; a prepared slot and five sixths gone → activate it; the
    /// active root expired (nothing ran for a whole lifetime) → activate a
    /// valid prepared slot or a fresh one; retired slots past their expiry →
    /// removed.
    pub fn advance(&self, now: SystemTime) -> Result<bool, CaError> {
        let _lock = self.layout.lock()?;
        let mut keys = self.snapshot();
        let mut changed = false;
        if self.layout.mark() != keys.mark {
            keys = Arc::new(keys::load(&self.layout, &self.trust_domain)?);
            changed = true;
        }
        let active = &keys.active;
        let mut stepped = true;
        if now >= active.not_after {
            warn!(
                serial = %hex(&active.serial),
                "the active ca root has expired; activating a new one"
            );
            match &keys.prepared {
                Some(prepared) if prepared.not_after > now => {}
                _ => {
                    self.discard_prepared(&keys)?;
                    keys::prepare(&self.layout, &self.trust_domain, self.options.ca_ttl)?;
                }
            }
            keys::activate(&self.layout, active)?;
        } else if keys.prepared.is_none() && now >= active.prepare_at() {
            keys::prepare(&self.layout, &self.trust_domain, self.options.ca_ttl)?;
        } else if keys.prepared.is_some() && now >= active.activate_at() {
            keys::activate(&self.layout, active)?;
        } else {
            stepped = false;
        }
        let pruned = keys::prune(&self.layout, &keys, now)?;
        if stepped || pruned {
            keys = Arc::new(keys::load(&self.layout, &self.trust_domain)?);
            changed = true;
        }
        if changed {
            log_loaded(&keys, true);
            self.replace(keys);
        }
        Ok(changed)
    }

    /// Prepares the next slot now, ahead of the schedule (`soma ca
    /// prepare`): its root and JWT key are published at once and sign
    /// nothing until activated. Refused when one is prepared already.
    pub fn prepare(&self) -> Result<SlotInfo, CaError> {
        let _lock = self.layout.lock()?;
        let keys = keys::load(&self.layout, &self.trust_domain)?;
        if let Some(prepared) = &keys.prepared {
            return Err(CaError::AlreadyPrepared {
                serial: hex(&prepared.serial),
            });
        }
        keys::prepare(&self.layout, &self.trust_domain, self.options.ca_ttl)?;
        let keys = keys::load(&self.layout, &self.trust_domain)?;
        log_loaded(&keys, true);
        let info = keys
            .prepared
            .as_ref()
            .map(|slot| slot_info(SlotState::Prepared, slot));
        self.replace(Arc::new(keys));
        info.ok_or(CaError::NothingPrepared {
            path: self.layout.cert(),
        })
    }

    /// Activates the prepared slot now, ahead of the schedule (`soma ca
    /// activate`); the active one becomes retired, still published until it
    /// expires. Refused when nothing is prepared.
    pub fn activate(&self) -> Result<SlotInfo, CaError> {
        let _lock = self.layout.lock()?;
        let keys = keys::load(&self.layout, &self.trust_domain)?;
        if keys.prepared.is_none() {
            return Err(CaError::NothingPrepared {
                path: self.layout.cert(),
            });
        }
        keys::activate(&self.layout, &keys.active)?;
        let keys = keys::load(&self.layout, &self.trust_domain)?;
        log_loaded(&keys, true);
        let info = slot_info(SlotState::Active, &keys.active);
        self.replace(Arc::new(keys));
        Ok(info)
    }

    /// Every slot: the active one, the prepared one if any, then the retired
    /// ones still published, newest first.
    pub fn slots(&self) -> Vec<SlotInfo> {
        let keys = self.snapshot();
        let mut slots = vec![slot_info(SlotState::Active, &keys.active)];
        slots.extend(
            keys.prepared
                .iter()
                .map(|slot| slot_info(SlotState::Prepared, slot)),
        );
        let now = SystemTime::now();
        slots.extend(
            keys.retired
                .iter()
                .filter(|old| old.not_after > now)
                .map(|old| SlotInfo {
                    state: SlotState::Retired,
                    serial: hex(&old.serial),
                    not_after: old.not_after,
                    jwt_kid: old.jwt.kid().to_owned(),
                }),
        );
        slots
    }

    /// Signs a JWT-SVID (ES256) for `id` with `audience`, valid for `ttl`
    /// (never past the active key's expiry).
    pub fn issue_jwt(&self, id: &SpiffeId, audience: &[String], ttl: Duration) -> Result<IssuedJwt, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignIdentity {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let keys = self.snapshot();
        let token = keys.active.jwt.issue(id, audience, ttl)?;
        info!(spiffe_id = %id, kid = keys.active.jwt.kid(), ?audience, "issued jwt-svid");
        Ok(token)
    }

    /// The JWT bundle (a JWKS document) of the trust domain: the key of
    /// every published slot.
    pub fn jwt_bundle(&self) -> Vec<u8> {
        let keys = self.snapshot();
        jwt::bundle(published_jwt_keys(&keys, SystemTime::now()))
    }

    /// Validates a JWT-SVID for `audience` against the published keys.
    pub fn validate_jwt(&self, token: &str, audience: &str) -> Result<ValidatedJwt, CaError> {
        let keys = self.snapshot();
        jwt::validate(
            token,
            audience,
            &self.trust_domain,
            published_jwt_keys(&keys, SystemTime::now()),
        )
    }

    /// The registration entries of this authority (`DIR/ca/entries.json`).
    pub fn entries(&self) -> EntryStore {
        EntryStore::for_data_dir(&self.data_dir, &self.trust_domain)
    }

    /// The trust domain whose root this is.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Issues an X509-SVID for `id`, valid from ten seconds ago for `ttl`
    /// (whole seconds; never past the root's own expiry).
    ///
    /// The SVID has a fresh P-256 key, exactly one URI SAN (`id`), plus
    /// `DNS:localhost` and `IP:127.0.0.1` when `opts.loopback_sans`;
    /// basicConstraints CA:false (critical); keyUsage digitalSignature only
    /// (critical); extendedKeyUsage serverAuth and clientAuth; a 128-bit random
    /// positive serial; subject and authority key identifiers.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration, opts: IssueOptions) -> Result<IssuedSvid, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignIdentity {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if id.path().is_empty() {
            return Err(CaError::TrustDomainIdentity { id: id.clone() });
        }
        if ttl.as_secs() == 0 {
            return Err(CaError::InvalidTtl {
                reason: "svid shorter than one second",
            });
        }

        // Certificates carry whole seconds: truncate first so that the times
        // returned to the caller are exactly the ones in the certificate.
        let keys = self.snapshot();
        let active = &keys.active;
        let now = whole_seconds(SystemTime::now());
        if now >= active.not_after {
            return Err(CaError::RootExpired {
                path: active.cert_path.clone(),
            });
        }
        let not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH);
        let not_after = now
            .checked_add(Duration::from_secs(ttl.as_secs()))
            .ok_or(CaError::InvalidTtl { reason: "too long" })?
            .min(active.not_after);

        let serial = self.random_serial()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = organization_name();
        params.subject_alt_names = vec![SanType::URI(ia5(id.to_string())?)];
        if opts.loopback_sans {
            params
                .subject_alt_names
                .push(SanType::DnsName(ia5("localhost".to_owned())?));
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = offset_date_time(not_before)?;
        params.not_after = offset_date_time(not_after)?;
        params.use_authority_key_identifier_extension = true;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Crypto {
            action: "generate svid key",
            source,
        })?;
        let cert = params
            .signed_by(&key, &active.issuer)
            .map_err(|source| CaError::Crypto {
                action: "sign svid",
                source,
            })?;

        info!(
            spiffe_id = %id,
            serial = %hex(&serial),
            not_after = %params.not_after,
            "issued x509-svid"
        );
        Ok(IssuedSvid {
            spiffe_id: id.clone(),
            chain_der: vec![cert.der().to_vec()],
            key_pkcs8_der: key.serialize_der(),
            serial,
            not_before,
            not_after,
        })
    }

    /// The published roots in DER, concatenated (the Workload API's bundle
    /// format): the active one, the prepared one, and the retired ones not
    /// yet expired.
    pub fn bundle_der(&self) -> Vec<u8> {
        let keys = self.snapshot();
        published_roots(&keys, SystemTime::now()).concat()
    }

    /// The published roots in PEM.
    pub fn bundle_pem(&self) -> String {
        let keys = self.snapshot();
        let mut out = String::new();
        for root in published_roots(&keys, SystemTime::now()) {
            pem::encode_into(&mut out, pem::CERTIFICATE, root);
        }
        out
    }

    /// Issues an SVID for `id` (with the loopback SANs) and writes, for
    /// operators, `OUT/svid.pem` (the chain), `OUT/key.pem` (PKCS#8, mode 0600)
    /// and `OUT/bundle.pem`. Each file is replaced atomically.
    pub fn issue_to_dir(&self, id: &SpiffeId, ttl: Duration, out: &Path) -> Result<IssuedSvid, CaError> {
        let svid = self.issue(id, ttl, IssueOptions::default())?;
        files::create_dir(out, 0o700)?;
        // The key first: a reader that sees the new certificate must find the
        // matching key already in place.
        files::write_atomic(&out.join("key.pem"), svid.key_pem().as_bytes(), PRIVATE_FILE)?;
        files::write_atomic(&out.join("svid.pem"), svid.chain_pem().as_bytes(), PUBLIC_FILE)?;
        files::write_atomic(&out.join("bundle.pem"), self.bundle_pem().as_bytes(), PUBLIC_FILE)?;
        Ok(svid)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Swaps in `keys`. The lock only guards an `Arc` swap, which cannot be
    /// left half done, so a poisoned lock still holds consistent material.
    fn replace(&self, keys: Arc<KeySet>) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
    }

    /// Removes a prepared slot that can no longer be activated (it expired
    /// while nothing ran). The caller holds the lock.
    fn discard_prepared(&self, keys: &KeySet) -> Result<(), CaError> {
        if let Some(prepared) = &keys.prepared {
            warn!(serial = %hex(&prepared.serial), "discarding an expired prepared root");
            let dir = prepared.cert_path.parent().unwrap_or(Path::new("."));
            std::fs::remove_dir_all(dir).map_err(CaError::io("cannot remove", dir))?;
        }
        Ok(())
    }

    /// 16 random bytes whose first byte is not zero, so that the DER INTEGER
    /// (always positive: the encoder adds a 0x00 sign octet when the top bit
    /// is set) has exactly these 16 bytes as its magnitude.
    fn random_serial(&self) -> Result<Vec<u8>, CaError> {
        let mut serial = vec![0u8; SERIAL_LEN];
        // A zero first byte happens once in 256 draws; a few redraws suffice.
        for _ in 0..16 {
            self.rng.fill(&mut serial).map_err(|_| CaError::Random)?;
            if serial[0] != 0 {
                return Ok(serial);
            }
        }
        Err(CaError::Random)
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signing key is deliberately left out.
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("slots", &self.slots())
            .finish_non_exhaustive()
    }
}

/// Options of [`Authority::issue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IssueOptions {
    /// Adds `DNS:localhost` and `IP:127.0.0.1` SANs beside the URI SAN, which
    /// gRPC clients that verify the server by name (grpcio, grpcurl) need.
    pub loopback_sans: bool,
}

impl Default for IssueOptions {
    fn default() -> Self {
        Self { loopback_sans: true }
    }
}

/// An X509-SVID and its private key, as issued.
#[derive(Clone)]
pub struct IssuedSvid {
    /// The SPIFFE ID in the URI SAN.
    pub spiffe_id: SpiffeId,
    /// The certificate chain in DER, leaf first (the root is not included:
    /// it is the bundle).
    pub chain_der: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8_der: Vec<u8>,
    /// The serial number's big-endian magnitude.
    pub serial: Vec<u8>,
    /// The certificate's `notBefore`.
    pub not_before: SystemTime,
    /// The certificate's `notAfter`.
    pub not_after: SystemTime,
}

impl IssuedSvid {
    /// The chain in PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        let mut out = String::new();
        for der in &self.chain_der {
            pem::encode_into(&mut out, pem::CERTIFICATE, der);
        }
        out
    }

    /// The private key in PEM (PKCS#8, `PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        pem::encode(pem::PRIVATE_KEY, &self.key_pkcs8_der)
    }

    /// The chain in DER, concatenated: the Workload API's `x509_svid` format.
    pub fn chain_der_concatenated(&self) -> Vec<u8> {
        self.chain_der.concat()
    }

    /// The serial number in lowercase hex, for logs.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }
}

impl fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is deliberately left out.
        f.debug_struct("IssuedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The roots every bundle carries at `now`, each once.
fn published_roots(keys: &KeySet, now: SystemTime) -> Vec<&[u8]> {
    let mut roots: Vec<&[u8]> = vec![&keys.active.root_der];
    roots.extend(keys.prepared.iter().map(|slot| slot.root_der.as_slice()));
    for old in keys.retired.iter().filter(|old| old.not_after > now) {
        // A crash during an activation can leave the active root's retired
        // copy in place before the switch: publish it once.
        if !roots.contains(&old.root_der.as_slice()) {
            roots.push(&old.root_der);
        }
    }
    roots
}

/// The JWT keys every bundle carries at `now`, each once.
fn published_jwt_keys(keys: &KeySet, now: SystemTime) -> Vec<&JwtPublicKey> {
    let mut published = vec![keys.active.jwt.public()];
    published.extend(keys.prepared.iter().map(|slot| slot.jwt.public()));
    for old in keys.retired.iter().filter(|old| old.jwt.not_after() > now) {
        if !published.iter().any(|key| key.kid() == old.jwt.kid()) {
            published.push(&old.jwt);
        }
    }
    published
}

fn slot_info(state: SlotState, slot: &Slot) -> SlotInfo {
    SlotInfo {
        state,
        serial: hex(&slot.serial),
        not_after: slot.not_after,
        jwt_kid: slot.jwt.kid().to_owned(),
    }
}

/// Logs the slots after a change (at info) or an open (at debug: command
/// line tools open the authority for every command).
fn log_loaded(keys: &KeySet, changed: bool) {
    if !changed {
        debug!(
            active_serial = %hex(&keys.active.serial),
            prepared_serial = keys.prepared.as_ref().map(|slot| hex(&slot.serial)),
            retired = keys.retired.len(),
            "ca keys loaded"
        );
        return;
    }
    info!(
        active_serial = %hex(&keys.active.serial),
        active_not_after = %humanish(keys.active.not_after),
        jwt_kid = keys.active.jwt.kid(),
        prepared_serial = keys.prepared.as_ref().map(|slot| hex(&slot.serial)),
        retired = keys.retired.len(),
        "ca keys changed"
    );
}

/// Seconds since the epoch, for logs.
fn humanish(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn check_ca_ttl(ttl: Duration) -> Result<(), CaError> {
    if ttl < MIN_CA_TTL {
        return Err(CaError::InvalidTtl {
            reason: "ca ttl shorter than six seconds",
        });
    }
    Ok(())
}

pub(crate) fn organization_name() -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name
}

pub(crate) fn ia5(value: String) -> Result<Ia5String, CaError> {
    Ia5String::try_from(value).map_err(|source| CaError::Crypto {
        action: "encode subject alternative name",
        source,
    })
}

/// `t` truncated to whole seconds.
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

pub(crate) fn offset_date_time(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or(CaError::InvalidTtl { reason: "too long" })
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
