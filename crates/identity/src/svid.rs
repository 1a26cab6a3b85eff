//! An X.509-SVID with its private key, ready to be presented in handshakes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::bundle::{certificates_from_pem, split_der_certificates};
use crate::error::{IdentityError, SvidError};
use crate::spiffe_id::SpiffeId;
use crate::validate::check_leaf;

/// An X.509-SVID with its private key: chain (leaf first) + private key.
///
/// Construction checks everything that needs neither a bundle nor a clock:
/// the leaf's X509-SVID rules (one URI SAN holding a SPIFFE ID, not a CA,
/// critical keyUsage with digitalSignature only among the signing bits) and
/// that the private key matches the leaf. Chaining and validity are checked
/// by [`crate::SvidStore`] against the bundles.
#[derive(Clone)]
pub struct Svid {
    spiffe_id: SpiffeId,
    serial: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    certified: Arc<CertifiedKey>,
}

impl Svid {
    /// From a concatenated DER chain (leaf first) and a PKCS#8 DER key, the
    /// encoding of the Workload API.
    pub fn from_der(chain_concat_der: &[u8], pkcs8_key_der: &[u8]) -> Result<Self, IdentityError> {
        let chain = split_der_certificates(chain_concat_der, "svid chain")?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key_der.to_vec()));
        Self::from_parts(chain, key)
    }

    /// From a PEM chain (leaf first) and a PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let chain = certificates_from_pem(chain_pem, "svid chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| IdentityError::Pem {
            what: "svid key",
            reason: err.to_string(),
        })?;
        Self::from_parts(chain, key)
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::EmptyChain)?;
        let (spiffe_id, serial, not_before, not_after) = {
            let (_, x509) =
                x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|err| SvidError::Malformed {
                    index: 0,
                    reason: err.to_string(),
                })?;
            let spiffe_id = check_leaf(&x509)?;
            // A negative notAfter (before 1970) is clamped to the epoch: such a
            // certificate is expired either way.
            let secs = u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0);
            let start = u64::try_from(x509.validity().not_before.timestamp()).unwrap_or(0);
            (
                spiffe_id,
                x509.raw_serial().to_vec(),
                UNIX_EPOCH + Duration::from_secs(start),
                UNIX_EPOCH + Duration::from_secs(secs),
            )
        };
        let provider = rustls::crypto::ring::default_provider();
        // `from_der` loads the key and refuses one whose public half is not the leaf's.
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(IdentityError::PrivateKey)?;
        Ok(Self {
            spiffe_id,
            serial,
            not_before,
            not_after,
            certified: Arc::new(certified),
        })
    }

    /// The SPIFFE ID of the leaf's URI SAN.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The leaf's serial number, as encoded (big-endian bytes).
    pub fn serial(&self) -> Vec<u8> {
        self.serial.clone()
    }

    /// The start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain and signing key as rustls presents them.
    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }
}

impl fmt::Debug for Svid {
    // The private key is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &hex(&self.serial))
            .field("not_after", &self.not_after)
            .field("chain_len", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

/// Lowercase hex, for logs.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
