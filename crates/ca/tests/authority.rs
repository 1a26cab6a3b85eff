#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The authority: root persistence, the exact shape of issued SVIDs, refusals.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use soma_ca::{Authority, CaError, IssueOptions};
use soma_identity::{SpiffeId, TrustDomain};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE,
    OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::X509Certificate;

use common::{spiffe_id, trust_domain, verify_as_client, verify_as_server};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn unix(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reopening_the_same_dir_yields_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    let second = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    assert_eq!(first.bundle_der(), second.bundle_der());
    assert_eq!(first.bundle_pem(), second.bundle_pem());
    assert_eq!(second.trust_domain(), &trust_domain());

    let cert_path = dir.path().join("ca/ca.pem");
    let key_path = dir.path().join("ca/ca.key");
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&dir.path().join("ca")), 0o700);
    let on_disk = CertificateDer::from_pem_file(&cert_path).unwrap();
    assert_eq!(on_disk.as_ref(), first.bundle_der().as_slice());
    PrivatePkcs8KeyDer::from_pem_file(&key_path).expect("ca.key is PKCS#8 PEM");

    // An SVID issued by the first instance chains to the second's bundle:
    // the same key, not only the same certificate.
    let svid = first
        .issue(
            &spiffe_id("/svc"),
            Duration::from_secs(60),
            IssueOptions::default(),
        )
        .unwrap();
    verify_as_client(&second.bundle_der(), &svid.chain_der[0]).unwrap();
}

#[test]
fn reopening_with_another_trust_domain_fails() {
    let dir = tempfile::tempdir().unwrap();
    Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    let other = TrustDomain::parse("other.test").unwrap();
    let err = Authority::open_or_create(dir.path(), &other).unwrap_err();
    match &err {
        CaError::TrustDomainMismatch {
            expected,
            found,
            path,
        } => {
            assert_eq!(expected, &other);
            assert_eq!(found, "spiffe://somastack.test");
            assert_eq!(path, &dir.path().join("ca/ca.pem"));
        }
        e => panic!("unexpected error {e:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "ca root in {} belongs to trust domain spiffe://somastack.test, not other.test",
            dir.path().join("ca/ca.pem").display()
        )
    );
}

#[test]
fn damaged_root_directories_are_refused() {
    struct Case {
        name: &'static str,
        /// Damages the `ca` directory of a freshly created root; `other` is the
        /// `ca` directory of an unrelated root of the same trust domain.
        damage: fn(ca: &std::path::Path, other: &std::path::Path),
        /// The file named in the error and the reason.
        expected: (&'static str, &'static str),
    }
    let cases = [
        Case {
            name: "key of another root",
            damage: |ca, other| {
                std::fs::copy(other.join("ca.key"), ca.join("ca.key")).unwrap();
            },
            expected: ("ca.key", "key does not match the certificate in ca.pem"),
        },
        Case {
            name: "garbage certificate",
            damage: |ca, _| std::fs::write(ca.join("ca.pem"), "not pem at all\n").unwrap(),
            expected: ("ca.pem", "0 pem blocks, expected one"),
        },
        Case {
            name: "two certificates",
            damage: |ca, other| {
                let mut both = std::fs::read(ca.join("ca.pem")).unwrap();
                both.extend(std::fs::read(other.join("ca.pem")).unwrap());
                std::fs::write(ca.join("ca.pem"), both).unwrap();
            },
            expected: ("ca.pem", "2 pem blocks, expected one"),
        },
        Case {
            name: "key pem in the certificate file",
            damage: |ca, _| {
                std::fs::copy(ca.join("ca.key"), ca.join("ca.pem")).unwrap();
            },
            expected: ("ca.pem", "pem block is \"PRIVATE KEY\", expected a certificate"),
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
        Authority::open_or_create(other.path(), &trust_domain()).unwrap();
        (case.damage)(&dir.path().join("ca"), &other.path().join("ca"));
        match Authority::open_or_create(dir.path(), &trust_domain()).unwrap_err() {
            CaError::InvalidRoot { path, reason } => {
                assert_eq!(path, dir.path().join("ca").join(case.expected.0), "{}", case.name);
                assert_eq!(reason, case.expected.1, "{}", case.name);
            }
            e => panic!("{}: unexpected error {e:?}", case.name),
        }
    }
}

#[test]
fn root_has_exactly_the_ca_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    let der = authority.bundle_der();
    let (rest, root) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(rest.is_empty());

    assert_eq!(root.subject(), root.issuer(), "self-signed");
    let bc = root.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = root.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature() && !ku.value.key_encipherment() && !ku.value.key_agreement());
    assert_eq!(uri_sans(&root), ["spiffe://somastack.test"]);
    assert_eq!(
        root.public_key()
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        x509_parser::oid_registry::OID_EC_P256
    );
    let validity = root.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        24 * 60 * 60 + 10,
        "the default lifetime (24 h, SPIRE's ca_ttl) from ten seconds ago"
    );
    let serial = root.tbs_certificate.serial.to_bytes_be();
    assert_eq!(serial.len(), 16);

    // The bundle is what spiffe accepts as an X.509 bundle for the domain.
    let td = spiffe::TrustDomain::new("somastack.test").unwrap();
    let bundle = spiffe::X509Bundle::parse_from_der(td, &der).unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(
        CertificateDer::pem_slice_iter(authority.bundle_pem().as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect::<Vec<_>>(),
        [der]
    );
}

#[test]
fn issued_svids_have_exactly_the_svid_extensions() {
    struct Case {
        name: &'static str,
        loopback_sans: bool,
        expected_dns: &'static [&'static str],
        expected_ips: &'static [[u8; 4]],
    }
    let cases = [
        Case {
            name: "with loopback sans",
            loopback_sans: true,
            expected_dns: &["localhost"],
            expected_ips: &[[127, 0, 0, 1]],
        },
        Case {
            name: "uri san only",
            loopback_sans: false,
            expected_dns: &[],
            expected_ips: &[],
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    let id = spiffe_id("/service/gateway");
    let ttl = Duration::from_secs(3600);

    for case in cases {
        let svid = authority
            .issue(
                &id,
                ttl,
                IssueOptions {
                    loopback_sans: case.loopback_sans,
                },
            )
            .unwrap();
        assert_eq!(svid.spiffe_id, id, "{}", case.name);
        assert_eq!(
            svid.chain_der.len(),
            1,
            "{}: leaf only; the root is the bundle",
            case.name
        );
        let (rest, leaf) = x509_parser::parse_x509_certificate(&svid.chain_der[0]).unwrap();
        assert!(rest.is_empty());

        let oids: BTreeSet<String> = leaf.extensions().iter().map(|e| e.oid.to_id_string()).collect();
        let expected: BTreeSet<String> = [
            OID_X509_EXT_SUBJECT_ALT_NAME,
            OID_X509_EXT_KEY_USAGE,
            OID_X509_EXT_EXTENDED_KEY_USAGE,
            OID_X509_EXT_BASIC_CONSTRAINTS,
            OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
            OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
        ]
        .iter()
        .map(|o| o.to_id_string())
        .collect();
        assert_eq!(oids, expected, "{}", case.name);
        assert_eq!(leaf.extensions().len(), 6, "{}: no extension twice", case.name);

        let san = leaf.subject_alternative_name().unwrap().unwrap();
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(*u),
                GeneralName::DNSName(d) => dns.push(*d),
                GeneralName::IPAddress(ip) => ips.push(<[u8; 4]>::try_from(*ip).unwrap()),
                other => panic!("{}: unexpected san {other:?}", case.name),
            }
        }
        assert_eq!(uris, ["spiffe://somastack.test/service/gateway"], "{}", case.name);
        assert_eq!(dns, case.expected_dns, "{}", case.name);
        assert_eq!(ips, case.expected_ips, "{}", case.name);

        let bc = leaf.basic_constraints().unwrap().unwrap();
        assert!(bc.critical, "{}", case.name);
        assert!(!bc.value.ca, "{}", case.name);
        let ku = leaf.key_usage().unwrap().unwrap();
        assert!(ku.critical, "{}", case.name);
        assert_eq!(
            ku.value.flags, 1,
            "{}: digitalSignature (bit 0) and nothing else",
            case.name
        );
        assert!(ku.value.digital_signature());
        let eku = leaf.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth, "{}", case.name);
        assert!(
            !eku.value.any
                && !eku.value.code_signing
                && !eku.value.email_protection
                && !eku.value.time_stamping
                && !eku.value.ocsp_signing
                && eku.value.other.is_empty(),
            "{}",
            case.name
        );
        match leaf
            .extensions()
            .iter()
            .find(|e| e.oid == OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
            .unwrap()
            .parsed_extension()
        {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                let root_der = authority.bundle_der();
                let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
                let ski = root
                    .extensions()
                    .iter()
                    .find_map(|e| match e.parsed_extension() {
                        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                        _ => None,
                    })
                    .unwrap();
                assert_eq!(
                    aki.key_identifier.as_ref().unwrap().0,
                    ski.as_slice(),
                    "{}",
                    case.name
                );
            }
            other => panic!("{}: unexpected {other:?}", case.name),
        }

        // Serial: 128 bits, positive, the one reported.
        assert_eq!(
            leaf.tbs_certificate.serial.to_bytes_be(),
            svid.serial,
            "{}",
            case.name
        );
        assert_eq!(svid.serial.len(), 16, "{}", case.name);
        assert!(
            leaf.raw_serial()[0] & 0x80 == 0,
            "{}: DER INTEGER is positive",
            case.name
        );

        // Validity: from ten seconds ago for exactly the ttl.
        let validity = leaf.validity();
        assert_eq!(
            validity.not_before.timestamp(),
            unix(svid.not_before),
            "{}",
            case.name
        );
        assert_eq!(
            validity.not_after.timestamp(),
            unix(svid.not_after),
            "{}",
            case.name
        );
        assert_eq!(
            validity.not_after.timestamp() - validity.not_before.timestamp(),
            3600 + 10,
            "{}",
            case.name
        );

        // Independent consumers accept it.
        let parsed = spiffe::X509Svid::parse_from_der(&svid.chain_der.concat(), &svid.key_pkcs8_der).unwrap();
        assert_eq!(
            parsed.spiffe_id().to_string(),
            "spiffe://somastack.test/service/gateway"
        );
        verify_as_client(&authority.bundle_der(), &svid.chain_der[0]).unwrap();
        let as_localhost = verify_as_server(&authority.bundle_der(), &svid.chain_der[0], "localhost");
        let as_loopback_ip = verify_as_server(&authority.bundle_der(), &svid.chain_der[0], "127.0.0.1");
        assert_eq!(
            as_localhost.is_ok(),
            case.loopback_sans,
            "{}: {as_localhost:?}",
            case.name
        );
        assert_eq!(
            as_loopback_ip.is_ok(),
            case.loopback_sans,
            "{}: {as_loopback_ip:?}",
            case.name
        );
    }
}

#[test]
fn svids_do_not_chain_to_another_root() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let authority = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    let other = Authority::open_or_create(other_dir.path(), &trust_domain()).unwrap();
    let svid = authority
        .issue(
            &spiffe_id("/svc"),
            Duration::from_secs(60),
            IssueOptions::default(),
        )
        .unwrap();
    // Both roots carry the same subject name, so webpki takes the other root
    // for the issuer and rejects the signature.
    assert_eq!(
        verify_as_client(&other.bundle_der(), &svid.chain_der[0]),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature
        ))
    );
}

#[test]
fn every_svid_has_its_own_key_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    let id = spiffe_id("/svc");
    let a = authority
        .issue(&id, Duration::from_secs(60), IssueOptions::default())
        .unwrap();
    let b = authority
        .issue(&id, Duration::from_secs(60), IssueOptions::default())
        .unwrap();
    assert_ne!(a.serial, b.serial);
    assert_ne!(a.key_pkcs8_der, b.key_pkcs8_der);
}

#[test]
fn issue_refuses_what_is_not_a_workload_of_the_trust_domain() {
    struct Case {
        name: &'static str,
        id: &'static str,
        ttl: Duration,
        expected: &'static str,
    }
    let cases = [
        Case {
            name: "another trust domain",
            id: "spiffe://other.test/svc",
            ttl: Duration::from_secs(60),
            expected: "spiffe://other.test/svc is not in trust domain somastack.test",
        },
        Case {
            name: "sub-domain is another trust domain",
            id: "spiffe://a.somastack.test/svc",
            ttl: Duration::from_secs(60),
            expected: "spiffe://a.somastack.test/svc is not in trust domain somastack.test",
        },
        Case {
            name: "the trust domain itself",
            id: "spiffe://somastack.test",
            ttl: Duration::from_secs(60),
            expected: "spiffe://somastack.test has no path; a leaf svid must name a workload",
        },
        Case {
            name: "zero ttl",
            id: "spiffe://somastack.test/svc",
            ttl: Duration::ZERO,
            expected: "invalid lifetime: svid shorter than one second",
        },
        Case {
            name: "sub-second ttl",
            id: "spiffe://somastack.test/svc",
            ttl: Duration::from_millis(999),
            expected: "invalid lifetime: svid shorter than one second",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    for case in cases {
        let id = SpiffeId::parse(case.id).unwrap();
        let err = authority
            .issue(&id, case.ttl, IssueOptions::default())
            .unwrap_err();
        match (&err, case.name) {
            (
                CaError::ForeignIdentity { .. },
                "another trust domain" | "sub-domain is another trust domain",
            )
            | (CaError::TrustDomainIdentity { .. }, "the trust domain itself")
            | (CaError::InvalidTtl { .. }, "zero ttl" | "sub-second ttl") => {}
            _ => panic!("{}: unexpected error {err:?}", case.name),
        }
        assert_eq!(err.to_string(), case.expected, "{}", case.name);
    }
}

#[test]
fn issue_to_dir_writes_chain_key_and_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
    let out = dir.path().join("out").join("gateway");
    let id = spiffe_id("/service/gateway");

    for round in 0..2 {
        // The second round replaces the files of the first.
        let svid = authority
            .issue_to_dir(&id, Duration::from_secs(600), &out)
            .unwrap();
        assert_eq!(mode(&out.join("key.pem")), 0o600, "round {round}");

        let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(out.join("svid.pem"))
            .unwrap()
            .map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(chain, svid.chain_der, "round {round}");
        let key = PrivatePkcs8KeyDer::from_pem_file(out.join("key.pem")).unwrap();
        assert_eq!(
            key.secret_pkcs8_der(),
            svid.key_pkcs8_der.as_slice(),
            "round {round}"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("bundle.pem")).unwrap(),
            authority.bundle_pem()
        );
        assert_eq!(
            std::fs::read_to_string(out.join("svid.pem")).unwrap(),
            svid.chain_pem()
        );
        assert_eq!(
            std::fs::read_to_string(out.join("key.pem")).unwrap(),
            svid.key_pem()
        );

        // The files on disk are a usable SVID for spiffe.
        let parsed = spiffe::X509Svid::parse_from_der(&chain.concat(), key.secret_pkcs8_der()).unwrap();
        assert_eq!(parsed.spiffe_id().to_string(), id.to_string());
        // No temporary file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["bundle.pem", "key.pem", "svid.pem"], "round {round}");
    }
}
