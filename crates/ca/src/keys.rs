//! The authority's key material on disk, and how it rotates.
//!
//! Like a SPIRE server's CA manager, the authority keeps its keys in slots,
//! each an X.509 root and a JWT signing key that live and die together:
//!
//! ```text
//! DIR/ca/ca.pem ca.key jwt.key        the active slot: signs every SVID and JWT-SVID
//! DIR/ca/next/ca.pem ca.key jwt.key   the prepared slot: published, signs nothing yet
//! DIR/ca/retired/<serial>.pem         a root no longer active, published until it expires
//! DIR/ca/retired/<serial>.jwk.json    the JWT public key of that slot, with its expiry
//! DIR/ca/.lock                        held (flock) by whoever reads or changes the slots
//! ```
//!
//! The schedule is SPIRE's: a slot is prepared when the active root reaches
//! half its lifetime, and activated at five sixths of it. From preparation
//! on, every bundle carries the next root and JWT key, so every workload
//! trusts them (it receives bundle updates on its SVID stream) for a third
//! of the lifetime before the first certificate or token signed by them
//! exists. After activation the old root and key stay in the bundles until
//! they expire, so everything they signed stays verifiable for its whole
//! life (SVIDs and tokens are never issued past their signer's expiry).
//!
//! Crash safety. Preparation writes the slot into `next.tmp/` and renames
//! the directory into place: a slot is prepared entirely or not at all.
//! Activation first records the active slot as retired (idempotent), then
//! moves `ca.key`, `jwt.key` and lastly `ca.pem` from `next/`: the move of
//! `ca.pem` is the commit point. A crash in between leaves `next/` holding
//! `ca.pem` without `ca.key`; the next load finishes the moves rather than
//! open a certificate with another slot's key.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustix::fs::{FlockOperation, flock};
use soma_identity::TrustDomain;
use tracing::{info, warn};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::authority::{BACKDATE, SERIAL_LEN, hex, ia5, offset_date_time, organization_name, whole_seconds};
use crate::error::CaError;
use crate::files::{self, PRIVATE_FILE, PUBLIC_FILE};
use crate::jwt::{JwtKey, JwtPublicKey};
use crate::pem;

/// The paths of one authority's key material.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    ca_dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            ca_dir: data_dir.join("ca"),
        }
    }

    /// The active root certificate: its presence marks an authority.
    pub(crate) fn cert(&self) -> PathBuf {
        self.ca_dir.join(CERT)
    }

    fn next(&self) -> PathBuf {
        self.ca_dir.join("next")
    }

    fn retired(&self) -> PathBuf {
        self.ca_dir.join("retired")
    }

    /// Takes the exclusive lock of the key material; released on drop.
    pub(crate) fn lock(&self) -> Result<File, CaError> {
        files::create_dir(&self.ca_dir, 0o700)?;
        let path = self.ca_dir.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(CaError::io("cannot open", &path))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| CaError::io("cannot lock", &path)(e.into()))?;
        Ok(file)
    }

    /// What changes on disk whenever a slot is created, activated or
    /// pruned, by this process or another: compared to decide whether to
    /// reload.
    pub(crate) fn mark(&self) -> Vec<u8> {
        let mut mark = fs::read(self.cert()).unwrap_or_default();
        mark.push(0);
        mark.extend(fs::read(self.next().join(CERT)).unwrap_or_default());
        mark.push(0);
        let mut names: Vec<String> = fs::read_dir(self.retired())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        mark.extend(names.join("/").into_bytes());
        mark
    }
}

const CERT: &str = "ca.pem";
const KEY: &str = "ca.key";
const JWT_KEY: &str = "jwt.key";

/// One root and the JWT key that goes with it, ready to sign.
pub(crate) struct Slot {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) root_der: Vec<u8>,
    pub(crate) serial: Vec<u8>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) cert_path: PathBuf,
    pub(crate) jwt: JwtKey,
}

impl Slot {
    /// When the next slot is prepared: half the lifetime.
    pub(crate) fn prepare_at(&self) -> SystemTime {
        self.fraction(1, 2)
    }

    /// When the prepared slot replaces this one: five sixths of the lifetime.
    pub(crate) fn activate_at(&self) -> SystemTime {
        self.fraction(5, 6)
    }

    /// `num/den` of the way from the root's creation to its expiry. Its
    /// `notBefore` is backdated (see [`BACKDATE`]); the schedule counts from
    /// the moment it was made, so a short lifetime keeps its proportions.
    fn fraction(&self, num: u32, den: u32) -> SystemTime {
        let created = self.not_before + BACKDATE;
        let life = self.not_after.duration_since(created).unwrap_or(Duration::ZERO);
        created + life * num / den
    }
}

/// A slot no longer active: its public halves, published until expiry.
pub(crate) struct Retired {
    pub(crate) root_der: Vec<u8>,
    pub(crate) serial: Vec<u8>,
    pub(crate) not_after: SystemTime,
    pub(crate) jwt: JwtPublicKey,
}

/// Every slot of an authority, as loaded from disk in one go.
pub(crate) struct KeySet {
    pub(crate) active: Slot,
    pub(crate) prepared: Option<Slot>,
    pub(crate) retired: Vec<Retired>,
    /// [`Layout::mark`] at load time.
    pub(crate) mark: Vec<u8>,
}

/// Creates the first slot of a new authority directly in `DIR/ca` (the
/// caller holds the lock and has seen no `ca.pem`).
pub(crate) fn create_first(
    layout: &Layout,
    trust_domain: &TrustDomain,
    lifetime: Duration,
) -> Result<(), CaError> {
    write_slot(&layout.ca_dir, trust_domain, lifetime)
}

/// Loads every slot, first finishing an activation a crash interrupted.
/// The caller holds the lock.
pub(crate) fn load(layout: &Layout, trust_domain: &TrustDomain) -> Result<KeySet, CaError> {
    recover(layout)?;
    let active = load_slot(&layout.ca_dir, trust_domain)?;
    let prepared = if layout.next().join(CERT).exists() {
        Some(load_slot(&layout.next(), trust_domain)?)
    } else {
        None
    };
    let retired = load_retired(layout, trust_domain)?;
    Ok(KeySet {
        active,
        prepared,
        retired,
        mark: layout.mark(),
    })
}

/// Writes a new slot as the prepared one. The caller holds the lock and has
/// checked that none is prepared.
pub(crate) fn prepare(
    layout: &Layout,
    trust_domain: &TrustDomain,
    lifetime: Duration,
) -> Result<(), CaError> {
    let tmp = layout.ca_dir.join("next.tmp");
    match fs::remove_dir_all(&tmp) {
        Ok(()) => warn!(path = %tmp.display(), "removed an unfinished preparation"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CaError::io("cannot remove", &tmp)(e)),
    }
    files::create_dir(&tmp, 0o700)?;
    write_slot(&tmp, trust_domain, lifetime)?;
    fs::rename(&tmp, layout.next()).map_err(CaError::io("cannot rename into", &layout.next()))?;
    sync_dir(&layout.ca_dir)
}

/// Makes the prepared slot the active one, keeping the active one's public
/// halves as retired. The caller holds the lock and has loaded `keys`, which
/// holds a prepared slot.
pub(crate) fn activate(layout: &Layout, active: &Slot) -> Result<(), CaError> {
    let retired = layout.retired();
    files::create_dir(&retired, 0o700)?;
    let name = hex(&active.serial);
    // The key record first: a retired root is loaded only with its key.
    files::write_atomic(
        &retired.join(format!("{name}.jwk.json")),
        &active.jwt.public().to_record(),
        PUBLIC_FILE,
    )?;
    files::write_atomic(
        &retired.join(format!("{name}.pem")),
        pem::encode(pem::CERTIFICATE, &active.root_der).as_bytes(),
        PUBLIC_FILE,
    )?;
    sync_dir(&retired)?;
    finish_activation(layout)
}

/// Deletes the retired slots that expired by `now`; whether any was.
pub(crate) fn prune(layout: &Layout, keys: &KeySet, now: SystemTime) -> Result<bool, CaError> {
    let mut pruned = false;
    for old in keys.retired.iter().filter(|old| old.not_after <= now) {
        let name = hex(&old.serial);
        // The certificate first: a key record without its root is ignored.
        for file in [format!("{name}.pem"), format!("{name}.jwk.json")] {
            let path = layout.retired().join(file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CaError::io("cannot remove", &path)(e)),
            }
        }
        info!(serial = %name, "removed an expired root and jwt key from the bundles");
        pruned = true;
    }
    Ok(pruned)
}

/// The moves of an activation, in commit order; each is skipped when a
/// previous, interrupted run already made it.
fn finish_activation(layout: &Layout) -> Result<(), CaError> {
    let next = layout.next();
    for name in [KEY, JWT_KEY, CERT] {
        let from = next.join(name);
        if from.exists() {
            fs::rename(&from, layout.ca_dir.join(name)).map_err(CaError::io("cannot rename", &from))?;
        }
    }
    fs::remove_dir(&next).map_err(CaError::io("cannot remove", &next))?;
    sync_dir(&layout.ca_dir)
}

/// Finishes an activation a crash interrupted (see the module documentation).
fn recover(layout: &Layout) -> Result<(), CaError> {
    let next = layout.next();
    if !next.exists() {
        return Ok(());
    }
    let has = |name: &str| next.join(name).exists();
    match (has(CERT), has(KEY), has(JWT_KEY)) {
        // A prepared slot (or a damaged one: loading it says what is wrong).
        (true, true, _) => Ok(()),
        // ca.key has moved, ca.pem not yet: finish.
        (true, false, _) => {
            warn!(path = %next.display(), "finishing an interrupted activation");
            finish_activation(layout)
        }
        // Every file has moved; only the directory is left.
        (false, false, false) => fs::remove_dir(&next).map_err(CaError::io("cannot remove", &next)),
        (false, _, _) => Err(CaError::InvalidRoot {
            path: next,
            reason: "holds a key without its certificate".to_owned(),
        }),
    }
}

/// Generates a root and its JWT key into `dir`: keys first, the certificate
/// last (its presence marks a complete slot).
fn write_slot(dir: &Path, trust_domain: &TrustDomain, lifetime: Duration) -> Result<(), CaError> {
    let now = whole_seconds(SystemTime::now());
    let mut params = CertificateParams::default();
    params.distinguished_name = organization_name();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("SomaStack development CA {trust_domain}"),
    );
    params.subject_alt_names = vec![SanType::URI(ia5(trust_domain.id_string())?)];
    // pathLen 0: this root signs SVIDs only, never an intermediate CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut serial = vec![0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| CaError::Random)?;
    serial[0] |= 0x40; // never zero, so the DER encoding keeps all 16 bytes
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = offset_date_time(now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH))?;
    params.not_after = offset_date_time(now + Duration::from_secs(lifetime.as_secs()))?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Crypto {
        action: "generate ca key",
        source,
    })?;
    let cert = params.self_signed(&key).map_err(|source| CaError::Crypto {
        action: "sign ca root",
        source,
    })?;

    files::create_dir(dir, 0o700)?;
    files::write_atomic(&dir.join(KEY), key.serialize_pem().as_bytes(), PRIVATE_FILE)?;
    JwtKey::create(&dir.join(JWT_KEY))?;
    files::write_atomic(
        &dir.join(CERT),
        pem::encode(pem::CERTIFICATE, cert.der()).as_bytes(),
        PUBLIC_FILE,
    )?;
    info!(
        trust_domain = %trust_domain,
        serial = %hex(&serial),
        not_after = %params.not_after,
        path = %dir.display(),
        "created ca root and jwt key"
    );
    Ok(())
}

/// Reads and checks the slot in `dir`.
fn load_slot(dir: &Path, trust_domain: &TrustDomain) -> Result<Slot, CaError> {
    let cert_path = dir.join(CERT);
    let key_path = dir.join(KEY);
    let invalid = |path: &Path, reason: String| CaError::InvalidRoot {
        path: path.to_owned(),
        reason,
    };
    let root_der = read_root(&cert_path)?;
    let (_, cert) = X509Certificate::from_der(&root_der)
        .map_err(|e| invalid(&cert_path, format!("bad certificate: {e}")))?;
    check_root(&cert, &cert_path, trust_domain)?;

    let key_pem = fs::read_to_string(&key_path).map_err(CaError::io("cannot read", &key_path))?;
    warn_if_readable_by_others(&key_path);
    let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, format!("bad key: {e}")))?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(invalid(&key_path, "not an ecdsa p-256 key".to_owned()));
    }
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(invalid(
            &key_path,
            "key does not match the certificate in ca.pem".to_owned(),
        ));
    }
    let not_before = unix_time(cert.validity().not_before.timestamp());
    let not_after = unix_time(cert.validity().not_after.timestamp());
    let serial = cert.tbs_certificate.serial.to_bytes_be();

    // An authority created before JWT-SVIDs existed has no JWT key yet.
    let jwt_path = dir.join(JWT_KEY);
    if !jwt_path.exists() {
        JwtKey::create(&jwt_path)?;
    }
    let jwt = JwtKey::open(&jwt_path, not_after)?;
    let issuer =
        Issuer::from_ca_cert_der(&root_der.as_slice().into(), key).map_err(|source| CaError::Crypto {
            action: "load ca root",
            source,
        })?;
    Ok(Slot {
        issuer,
        root_der,
        serial,
        not_before,
        not_after,
        cert_path,
        jwt,
    })
}

/// The retired slots still published, each root with its key record.
fn load_retired(layout: &Layout, trust_domain: &TrustDomain) -> Result<Vec<Retired>, CaError> {
    let dir = layout.retired();
    let listing = match fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CaError::io("cannot read", &dir)(e)),
    };
    let mut retired = Vec::new();
    for entry in listing {
        let path = entry.map_err(CaError::io("cannot read", &dir))?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
        else {
            continue;
        };
        let root_der = read_root(&path)?;
        let (_, cert) = X509Certificate::from_der(&root_der).map_err(|e| CaError::InvalidRoot {
            path: path.clone(),
            reason: format!("bad certificate: {e}"),
        })?;
        check_root(&cert, &path, trust_domain)?;
        let record_path = dir.join(format!("{name}.jwk.json"));
        let record = fs::read(&record_path).map_err(CaError::io("cannot read", &record_path))?;
        let jwt = JwtPublicKey::from_record(&record).map_err(|reason| CaError::InvalidRoot {
            path: record_path,
            reason,
        })?;
        retired.push(Retired {
            serial: cert.tbs_certificate.serial.to_bytes_be(),
            not_after: unix_time(cert.validity().not_after.timestamp()),
            root_der,
            jwt,
        });
    }
    // Newest first, so listings read in rotation order.
    retired.sort_by_key(|old| std::cmp::Reverse(old.not_after));
    Ok(retired)
}

/// The DER of the one certificate in the PEM file `path`.
fn read_root(path: &Path) -> Result<Vec<u8>, CaError> {
    let invalid = |reason: String| CaError::InvalidRoot {
        path: path.to_owned(),
        reason,
    };
    let text = fs::read(path).map_err(CaError::io("cannot read", path))?;
    let mut blocks = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(&text) {
        blocks.push(block.map_err(|e| invalid(format!("bad pem: {e}")))?);
    }
    let [block] = blocks.as_slice() else {
        return Err(invalid(format!("{} pem blocks, expected one", blocks.len())));
    };
    if block.label != pem::CERTIFICATE {
        return Err(invalid(format!(
            "pem block is {:?}, expected a certificate",
            block.label
        )));
    }
    let (rest, _) =
        X509Certificate::from_der(&block.contents).map_err(|e| invalid(format!("bad certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the certificate".to_owned()));
    }
    Ok(block.contents.clone())
}

/// A root of `trust_domain` that may sign: its one URI SAN is the trust
/// domain's, it is a CA with keyCertSign.
fn check_root(cert: &X509Certificate<'_>, path: &Path, trust_domain: &TrustDomain) -> Result<(), CaError> {
    let invalid = |reason: String| CaError::InvalidRoot {
        path: path.to_owned(),
        reason,
    };
    // The trust domain first: it is the mistake an operator is most likely
    // to make, and it deserves its own error.
    let uris = uri_sans(cert).map_err(invalid)?;
    let [uri] = uris.as_slice() else {
        return Err(invalid(format!("{} uri sans, expected one", uris.len())));
    };
    if *uri != trust_domain.id_string() {
        return Err(CaError::TrustDomainMismatch {
            expected: trust_domain.clone(),
            found: (*uri).to_owned(),
            path: path.to_owned(),
        });
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err(invalid("not a ca certificate".to_owned())),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => {}
        _ => return Err(invalid("key usage lacks keyCertSign".to_owned())),
    }
    Ok(())
}

/// The URI SANs of a certificate.
fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative name: {e}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Makes the renames inside `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), CaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CaError::io("cannot sync", dir))
}

/// Logs when a key file can be read by anyone but its owner.
fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format!("{mode:o}"), "ca key is accessible to other users");
        }
    }
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}
