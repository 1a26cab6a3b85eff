//! The development root and the X509-SVIDs it signs.
//!
//! The root is an ECDSA P-256 self-signed certificate persisted as
//! `DIR/ca/ca.pem` and `DIR/ca/ca.key` (PKCS#8 PEM, mode 0600). Every open,
//! including the one right after creation, reads both files back and checks
//! them, so there is a single code path from disk to signing key.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use soma_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tracing::{info, warn};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::entries::EntryStore;
use crate::error::CaError;
use crate::files::{self, PRIVATE_FILE, PUBLIC_FILE};
use crate::jwt::{IssuedJwt, JwtKey, ValidatedJwt};
use crate::pem;

/// Lifetime of a newly created root.
const ROOT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How far `notBefore` is set in the past, so that a peer whose clock is a
/// little behind still accepts a certificate minted a moment ago.
const BACKDATE: Duration = Duration::from_secs(10);

/// Length of certificate serial numbers, in bytes (128 bits).
const SERIAL_LEN: usize = 16;

/// Organization name written in the subject of the root and of every SVID.
const ORGANIZATION: &str = "SomaStack";

/// The development authority: a P-256 root persisted under a directory.
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    root_der: Vec<u8>,
    root_not_after: SystemTime,
    root_path: PathBuf,
    data_dir: PathBuf,
    jwt: JwtKey,
    rng: SystemRandom,
}

impl Authority {
    /// Opens `DIR/ca/{ca.pem,ca.key}` or creates them: a self-signed ECDSA P-256
    /// root for `trust_domain` (basicConstraints CA:true, pathLen 0, critical;
    /// keyUsage keyCertSign|cRLSign, critical; URI SAN `spiffe://<td>`; valid
    /// one year). The key is written as PKCS#8 PEM with mode 0600.
    ///
    /// A directory that already holds a root is reused as is; reopening it with
    /// another trust domain is an error, and so is a root that has expired, a
    /// key that does not match the certificate, or anything this authority
    /// would not have written.
    pub fn open_or_create(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        let ca_dir = dir.join("ca");
        let cert_path = ca_dir.join("ca.pem");
        let key_path = ca_dir.join("ca.key");
        match fs::metadata(&cert_path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_root(&ca_dir, &cert_path, &key_path, trust_domain)?;
            }
            Err(e) => return Err(CaError::io("cannot inspect", &cert_path)(e)),
        }
        let mut authority = Self::open(&cert_path, &key_path, trust_domain)?;
        authority.data_dir = dir.to_owned();
        Ok(authority)
    }

    /// Opens the root under `DIR/ca` like [`Authority::open_or_create`], but
    /// never creates one: a missing root is an [`CaError::Io`] (not found).
    pub fn open_existing(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        let ca_dir = dir.join("ca");
        let mut authority = Self::open(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key"), trust_domain)?;
        authority.data_dir = dir.to_owned();
        Ok(authority)
    }

    /// Signs a JWT-SVID (ES256) for `id` with `audience`, valid for `ttl`.
    pub fn issue_jwt(&self, id: &SpiffeId, audience: &[String], ttl: Duration) -> Result<IssuedJwt, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignIdentity {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let token = self.jwt.issue(id, audience, ttl)?;
        info!(spiffe_id = %id, kid = self.jwt.kid(), ?audience, "issued jwt-svid");
        Ok(token)
    }

    /// The JWT bundle (a JWKS document) of the trust domain.
    pub fn jwt_bundle(&self) -> Vec<u8> {
        self.jwt.bundle()
    }

    /// Validates a JWT-SVID for `audience` against this authority's key.
    pub fn validate_jwt(&self, token: &str, audience: &str) -> Result<ValidatedJwt, CaError> {
        self.jwt.validate(token, audience, &self.trust_domain)
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
                reason: "shorter than one second",
            });
        }

        // Certificates carry whole seconds: truncate first so that the times
        // returned to the caller are exactly the ones in the certificate.
        let now = whole_seconds(SystemTime::now());
        if now >= self.root_not_after {
            return Err(CaError::RootExpired {
                path: self.root_path.clone(),
            });
        }
        let not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH);
        let not_after = now
            .checked_add(Duration::from_secs(ttl.as_secs()))
            .ok_or(CaError::InvalidTtl { reason: "too long" })?
            .min(self.root_not_after);

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
            .signed_by(&key, &self.issuer)
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

    /// The root certificate(s) in DER, concatenated: the Workload API's bundle format.
    pub fn bundle_der(&self) -> Vec<u8> {
        self.root_der.clone()
    }

    /// The root certificate(s) in PEM.
    pub fn bundle_pem(&self) -> String {
        pem::encode(pem::CERTIFICATE, &self.root_der)
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

    /// Reads and checks a persisted root.
    fn open(cert_path: &Path, key_path: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        let invalid = |path: &Path, reason: String| CaError::InvalidRoot {
            path: path.to_owned(),
            reason,
        };

        let cert_pem = fs::read(cert_path).map_err(CaError::io("cannot read", cert_path))?;
        let mut blocks = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(&cert_pem) {
            let block = block.map_err(|e| invalid(cert_path, format!("bad pem: {e}")))?;
            blocks.push(block);
        }
        let [block] = blocks.as_slice() else {
            return Err(invalid(
                cert_path,
                format!("{} pem blocks, expected one", blocks.len()),
            ));
        };
        if block.label != pem::CERTIFICATE {
            return Err(invalid(
                cert_path,
                format!("pem block is {:?}, expected a certificate", block.label),
            ));
        }
        let root_der = block.contents.clone();
        let (rest, cert) = X509Certificate::from_der(&root_der)
            .map_err(|e| invalid(cert_path, format!("bad certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(
                cert_path,
                "trailing bytes after the certificate".to_owned(),
            ));
        }

        // The trust domain first: it is the mistake an operator is most
        // likely to make, and it deserves its own error.
        let uris = uri_sans(&cert).map_err(|reason| invalid(cert_path, reason))?;
        let [uri] = uris.as_slice() else {
            return Err(invalid(
                cert_path,
                format!("{} uri sans, expected one", uris.len()),
            ));
        };
        if *uri != trust_domain.id_string() {
            return Err(CaError::TrustDomainMismatch {
                expected: trust_domain.clone(),
                found: (*uri).to_owned(),
                path: cert_path.to_owned(),
            });
        }
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => return Err(invalid(cert_path, "not a ca certificate".to_owned())),
        }
        match cert.key_usage() {
            Ok(Some(ku)) if ku.value.key_cert_sign() => {}
            _ => return Err(invalid(cert_path, "key usage lacks keyCertSign".to_owned())),
        }
        let root_not_after = unix_time(cert.validity().not_after.timestamp());
        if root_not_after <= SystemTime::now() {
            return Err(CaError::RootExpired {
                path: cert_path.to_owned(),
            });
        }

        let key_pem = fs::read_to_string(key_path).map_err(CaError::io("cannot read", key_path))?;
        warn_if_readable_by_others(key_path);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(key_path, format!("bad key: {e}")))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(invalid(key_path, "not an ecdsa p-256 key".to_owned()));
        }
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(invalid(
                key_path,
                "key does not match the certificate in ca.pem".to_owned(),
            ));
        }

        let issuer =
            Issuer::from_ca_cert_der(&root_der.as_slice().into(), key).map_err(|source| CaError::Crypto {
                action: "load ca root",
                source,
            })?;
        info!(
            trust_domain = %trust_domain,
            serial = %hex(&cert.tbs_certificate.serial.to_bytes_be()),
            path = %cert_path.display(),
            "opened ca root"
        );
        Ok(Self {
            trust_domain: trust_domain.clone(),
            issuer,
            root_der,
            root_not_after,
            root_path: cert_path.to_owned(),
            data_dir: PathBuf::new(),
            jwt: JwtKey::open_or_create(cert_path.parent().unwrap_or(Path::new(".")))?,
            rng: SystemRandom::new(),
        })
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
            .field("root_not_after", &self.root_not_after)
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

/// Generates the root, then writes the key and the certificate.
///
/// The certificate is renamed into place last: its presence is what marks the
/// directory as holding a root. Two processes creating a root at the same
/// instant could interleave their renames; the open that follows reads both
/// files back and refuses a key that does not match the certificate.
fn create_root(
    ca_dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    trust_domain: &TrustDomain,
) -> Result<(), CaError> {
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
    params.not_after = offset_date_time(now + ROOT_LIFETIME)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Crypto {
        action: "generate ca key",
        source,
    })?;
    let cert = params.self_signed(&key).map_err(|source| CaError::Crypto {
        action: "sign ca root",
        source,
    })?;

    files::create_dir(ca_dir, 0o700)?;
    files::write_atomic(key_path, key.serialize_pem().as_bytes(), PRIVATE_FILE)?;
    files::write_atomic(
        cert_path,
        pem::encode(pem::CERTIFICATE, cert.der()).as_bytes(),
        PUBLIC_FILE,
    )?;
    info!(
        trust_domain = %trust_domain,
        serial = %hex(&serial),
        not_after = %params.not_after,
        path = %cert_path.display(),
        "created ca root"
    );
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

/// Logs when a key file can be read by anyone but its owner.
fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format!("{mode:o}"), "ca key is accessible to other users");
        }
    }
}

fn organization_name() -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name
}

fn ia5(value: String) -> Result<Ia5String, CaError> {
    Ia5String::try_from(value).map_err(|source| CaError::Crypto {
        action: "encode subject alternative name",
        source,
    })
}

/// `t` truncated to whole seconds.
fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

fn offset_date_time(t: SystemTime) -> Result<OffsetDateTime, CaError> {
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
