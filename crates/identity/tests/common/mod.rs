//! Certificates minted at run time with rcgen (ECDSA P-256): CAs, SVIDs, and
//! the hostile variants the tables need.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, TrustDomain};
use time::OffsetDateTime;

/// Whole seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn unix(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn at(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap()).unwrap()
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A signing authority: root, or intermediate when `parent` was given.
pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub cert: CertificateDer<'static>,
}

impl Ca {
    /// A self-signed root CA named `name`.
    pub fn root(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap().der().clone();
        Self { params, key, cert }
    }

    /// An intermediate CA signed by `self`.
    pub fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer()).unwrap().der().clone();
        Self { params, key, cert }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// The bundle of `td` holding this CA as its only root.
    pub fn bundle(&self, td_name: &str) -> Bundle {
        Bundle::new(td(td_name), vec![self.cert.clone()]).unwrap()
    }

    /// Issues a leaf from `spec`.
    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = spec.params();
        let cert = params.signed_by(&key, &self.issuer()).unwrap().der().clone();
        Leaf {
            cert,
            key,
            chain_tail: Vec::new(),
        }
    }

    /// Issues a leaf from `spec` with the key and the serial number of
    /// `like`: a certificate that differs from `like` only where `spec` does.
    pub fn issue_twin(&self, spec: &LeafSpec, like: &Leaf) -> Leaf {
        let key = KeyPair::try_from(like.key.serialize_der().as_slice()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(like.cert.as_ref()).unwrap();
        let mut params = spec.params();
        params.serial_number = Some(SerialNumber::from_slice(parsed.raw_serial()));
        let cert = params.signed_by(&key, &self.issuer()).unwrap().der().clone();
        Leaf {
            cert,
            key,
            chain_tail: Vec::new(),
        }
    }

    /// Issues a standard SVID for `uri`.
    pub fn svid(&self, uri: &str) -> Leaf {
        self.issue(&LeafSpec::svid(uri))
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "SomaStack test");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = now_secs();
    params.not_before = at(now - 3600);
    params.not_after = at(now + 30 * 24 * 3600);
    params.serial_number = Some(random_serial());
    params
}

/// How the leaf's keyUsage extension is written.
#[derive(Clone, Copy, Debug)]
pub enum KeyUsageSpec {
    /// Critical, digitalSignature only (the X509-SVID profile).
    Standard,
    /// Absent.
    Absent,
    /// Critical, keyEncipherment only.
    NoDigitalSignature,
    /// Critical, digitalSignature + keyCertSign.
    WithKeyCertSign,
    /// Critical, digitalSignature + cRLSign.
    WithCrlSign,
    /// digitalSignature only, but not marked critical.
    NotCritical,
}

/// What a leaf looks like.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub is_ca: bool,
    pub key_usage: KeyUsageSpec,
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: u64,
    pub not_after: u64,
}

impl LeafSpec {
    /// A spec-complete SVID for `uri`, valid from an hour ago for a day,
    /// with both TLS EKUs and a `localhost` DNS SAN beside the URI SAN.
    pub fn svid(uri: &str) -> Self {
        let now = now_secs();
        Self {
            uris: vec![uri.to_owned()],
            dns: vec!["localhost".to_owned()],
            is_ca: false,
            key_usage: KeyUsageSpec::Standard,
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: now - 3600,
            not_after: now + 24 * 3600,
        }
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "SomaStack test workload");
        let mut sans = Vec::new();
        for uri in &self.uris {
            sans.push(SanType::URI(uri.as_str().try_into().unwrap()));
        }
        for dns in &self.dns {
            sans.push(SanType::DnsName(dns.as_str().try_into().unwrap()));
        }
        params.subject_alt_names = sans;
        params.is_ca = if self.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = match self.key_usage {
            KeyUsageSpec::Standard => vec![KeyUsagePurpose::DigitalSignature],
            KeyUsageSpec::Absent | KeyUsageSpec::NotCritical => vec![],
            KeyUsageSpec::NoDigitalSignature => vec![KeyUsagePurpose::KeyEncipherment],
            KeyUsageSpec::WithKeyCertSign => {
                vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]
            }
            KeyUsageSpec::WithCrlSign => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
        };
        if let KeyUsageSpec::NotCritical = self.key_usage {
            // keyUsage 2.5.29.15: BIT STRING, 7 unused bits, digitalSignature (bit 0).
            let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, 0x80]);
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
        }
        params.extended_key_usages = self.ekus.clone();
        params.not_before = at(self.not_before);
        params.not_after = at(self.not_after);
        params.serial_number = Some(random_serial());
        params
    }

    /// A self-signed certificate made from this spec (its own issuer).
    pub fn self_signed(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = self.params().self_signed(&key).unwrap().der().clone();
        Leaf {
            cert,
            key,
            chain_tail: Vec::new(),
        }
    }
}

/// A leaf certificate, its key, and the intermediates presented after it.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
    pub chain_tail: Vec<CertificateDer<'static>>,
}

impl Leaf {
    /// Presents `intermediate` after the leaf.
    pub fn with_intermediate(mut self, intermediate: &Ca) -> Self {
        self.chain_tail.push(intermediate.cert.clone());
        self
    }

    /// The presented chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![self.cert.clone()];
        chain.extend(self.chain_tail.iter().cloned());
        chain
    }

    /// The chain as concatenated DER (the Workload API encoding).
    pub fn chain_der(&self) -> Vec<u8> {
        self.chain().iter().flat_map(|c| c.as_ref().to_vec()).collect()
    }

    /// The private key, PKCS#8 DER.
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// As an `Svid`.
    pub fn svid(&self) -> Svid {
        Svid::from_der(&self.chain_der(), &self.key_der()).unwrap()
    }
}

/// A bundle set from bundles.
pub fn bundles(list: Vec<Bundle>) -> BundleSet {
    let mut set = BundleSet::new();
    for bundle in list {
        set.insert(bundle);
    }
    set
}
