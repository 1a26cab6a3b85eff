//! X509-SVID validation, table-driven, with certificates minted at run time:
//! each hostile chain is refused with its exact `SvidError`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Ca, KeyUsageSpec, LeafSpec, bundles, id, now_secs, td, unix};
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::CertificateDer;
use soma_identity::{
    AllowedTrustDomains, Bundle, IdentityError, PeerRole, SpiffeIdError, Svid, SvidError, peer_spiffe_id,
    validate_svid,
};

struct Case {
    name: &'static str,
    chain: Vec<CertificateDer<'static>>,
    allowed: Vec<&'static str>,
    role: PeerRole,
    expected: Result<&'static str, SvidError>,
}

#[test]
fn presented_chains_are_judged_by_the_x509_svid_rules() {
    let now = now_secs();
    let ca_a = Ca::root("ca a");
    let ca_b = Ca::root("ca b");
    let intermediate_a = ca_a.intermediate("intermediate a");
    let rogue = Ca::root("rogue ca");
    let bundle_set = bundles(vec![ca_a.bundle("a.test"), ca_b.bundle("b.test")]);

    let with = |f: &dyn Fn(&mut LeafSpec)| {
        let mut spec = LeafSpec::svid("spiffe://a.test/workload");
        f(&mut spec);
        spec
    };
    let expired = with(&|s| {
        s.not_before = now - 7200;
        s.not_after = now - 60;
    });
    let not_yet = with(&|s| {
        s.not_before = now + 600;
        s.not_after = now + 7200;
    });

    let cases = vec![
        Case {
            name: "valid",
            chain: ca_a.svid("spiffe://a.test/workload").chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Ok("spiffe://a.test/workload"),
        },
        Case {
            name: "valid as server",
            chain: ca_a.svid("spiffe://a.test/workload").chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Server,
            expected: Ok("spiffe://a.test/workload"),
        },
        Case {
            name: "valid through an intermediate",
            chain: intermediate_a
                .svid("spiffe://a.test/workload")
                .with_intermediate(&intermediate_a)
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Ok("spiffe://a.test/workload"),
        },
        Case {
            name: "valid without any eku",
            chain: ca_a.issue(&with(&|s| s.ekus.clear())).chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Ok("spiffe://a.test/workload"),
        },
        Case {
            name: "intermediate not presented",
            chain: intermediate_a.svid("spiffe://a.test/workload").chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::UnknownIssuer {
                trust_domain: td("a.test"),
            }),
        },
        Case {
            name: "chain to another ca",
            chain: rogue.svid("spiffe://a.test/workload").chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::UnknownIssuer {
                trust_domain: td("a.test"),
            }),
        },
        Case {
            name: "expired",
            chain: ca_a.issue(&expired).chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::Expired {
                not_after: now - 60,
                now,
            }),
        },
        Case {
            name: "not yet valid",
            chain: ca_a.issue(&not_yet).chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::NotYetValid {
                not_before: now + 600,
                now,
            }),
        },
        Case {
            name: "two uri sans",
            chain: ca_a
                .issue(&with(&|s| s.uris.push("spiffe://a.test/other".into())))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::MultipleUriSans { count: 2 }),
        },
        Case {
            name: "no uri san",
            chain: ca_a.issue(&with(&|s| s.uris.clear())).chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::NoUriSan),
        },
        Case {
            name: "uri san is not a spiffe id",
            chain: ca_a
                .issue(&with(&|s| s.uris = vec!["https://a.test/workload".into()]))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::InvalidSpiffeId(SpiffeIdError::WrongScheme)),
        },
        Case {
            name: "uri san is the trust domain id",
            chain: ca_a
                .issue(&with(&|s| s.uris = vec!["spiffe://a.test".into()]))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::RootSpiffeId {
                id: id("spiffe://a.test"),
            }),
        },
        Case {
            name: "ca certificate as leaf",
            chain: ca_a.issue(&with(&|s| s.is_ca = true)).chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::LeafIsCa),
        },
        Case {
            name: "no key usage",
            chain: ca_a.issue(&with(&|s| s.key_usage = KeyUsageSpec::Absent)).chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::MissingKeyUsage),
        },
        Case {
            name: "key usage not critical",
            chain: ca_a
                .issue(&with(&|s| s.key_usage = KeyUsageSpec::NotCritical))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::KeyUsageNotCritical),
        },
        Case {
            name: "leaf without digitalSignature",
            chain: ca_a
                .issue(&with(&|s| s.key_usage = KeyUsageSpec::NoDigitalSignature))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::MissingDigitalSignature),
        },
        Case {
            name: "leaf with keyCertSign",
            chain: ca_a
                .issue(&with(&|s| s.key_usage = KeyUsageSpec::WithKeyCertSign))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::LeafHasKeyCertSign),
        },
        Case {
            name: "leaf with cRLSign",
            chain: ca_a
                .issue(&with(&|s| s.key_usage = KeyUsageSpec::WithCrlSign))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::LeafHasCrlSign),
        },
        Case {
            name: "server-only eku used as client",
            chain: ca_a
                .issue(&with(&|s| s.ekus = vec![ExtendedKeyUsagePurpose::ServerAuth]))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::ExtendedKeyUsage { role: "client" }),
        },
        Case {
            name: "client-only eku used as server",
            chain: ca_a
                .issue(&with(&|s| s.ekus = vec![ExtendedKeyUsagePurpose::ClientAuth]))
                .chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Server,
            expected: Err(SvidError::ExtendedKeyUsage { role: "server" }),
        },
        Case {
            name: "svid of another trust domain, not allowed",
            chain: ca_b.svid("spiffe://b.test/workload").chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::TrustDomainNotAllowed {
                trust_domain: td("b.test"),
            }),
        },
        Case {
            name: "svid of another trust domain, allowed but without bundle",
            chain: ca_a.svid("spiffe://c.test/workload").chain(),
            allowed: vec!["a.test", "c.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::NoBundle {
                trust_domain: td("c.test"),
            }),
        },
        Case {
            name: "svid of other allowed trust domain with its own bundle",
            chain: ca_b.svid("spiffe://b.test/workload").chain(),
            allowed: vec!["a.test", "b.test"],
            role: PeerRole::Client,
            expected: Ok("spiffe://b.test/workload"),
        },
        Case {
            name: "svid of b issued by a's ca (never pooled)",
            chain: ca_a.svid("spiffe://b.test/workload").chain(),
            allowed: vec!["a.test", "b.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::UnknownIssuer {
                trust_domain: td("b.test"),
            }),
        },
        Case {
            name: "self-signed leaf not in any bundle",
            chain: LeafSpec::svid("spiffe://a.test/workload").self_signed().chain(),
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::SelfSignedLeaf),
        },
        Case {
            name: "empty chain",
            chain: vec![],
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::EmptyChain),
        },
        Case {
            name: "garbage leaf",
            chain: vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])],
            allowed: vec!["a.test"],
            role: PeerRole::Client,
            expected: Err(SvidError::Malformed {
                index: 0,
                reason: String::new(),
            }),
        },
    ];

    for case in cases {
        let allowed = AllowedTrustDomains::Only(case.allowed.iter().map(|t| td(t)).collect());
        let got = validate_svid(&case.chain, &bundle_set, &allowed, unix(now), case.role);
        match (&got, &case.expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got.to_string(), *expected, "case {:?}", case.name),
            // The parser's wording is not ours to pin; the variant and index are.
            (Err(SvidError::Malformed { index, .. }), Err(SvidError::Malformed { index: want, .. })) => {
                assert_eq!(index, want, "case {:?}", case.name);
            }
            (got, expected) => {
                assert_eq!(
                    got.clone().map(|id| id.to_string()),
                    expected.clone().map(str::to_owned),
                    "case {:?}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn a_self_signed_leaf_slipped_into_the_bundle_is_still_refused() {
    // Path validation alone would accept this leaf as its own trust anchor.
    let ca_a = Ca::root("ca a");
    let self_signed = LeafSpec::svid("spiffe://a.test/workload").self_signed();
    let poisoned = bundles(vec![
        Bundle::new(td("a.test"), vec![ca_a.cert.clone(), self_signed.cert.clone()]).unwrap(),
    ]);
    let got = validate_svid(
        &self_signed.chain(),
        &poisoned,
        &AllowedTrustDomains::local(&td("a.test")),
        unix(now_secs()),
        PeerRole::Client,
    );
    assert_eq!(got, Err(SvidError::SelfSignedLeaf));
}

/// The refusal that names a trust domain, word for word. That every
/// refusal reads as a lowercase reason is checked for every `SvidError`
/// variant by `error::tests::every_svid_refusal_reads_as_a_lowercase_reason`
/// inside the crate: `SvidError` is `#[non_exhaustive]`, so only there can a
/// `match` without a wildcard make a new variant a compile error until it is
/// listed (a hand-written list here covered 5 of 23 variants).
#[test]
fn an_unknown_issuer_reads_as_a_lowercase_reason_naming_the_trust_domain() {
    assert_eq!(
        SvidError::UnknownIssuer {
            trust_domain: td("b.test")
        }
        .to_string(),
        "chain does not lead to a root in the bundle of trust domain b.test"
    );
}

#[test]
fn svid_construction_checks_the_leaf_and_the_key() {
    let ca = Ca::root("ca a");
    let leaf = ca.svid("spiffe://a.test/workload");
    let svid = Svid::from_der(&leaf.chain_der(), &leaf.key_der()).unwrap();
    assert_eq!(svid.spiffe_id(), &id("spiffe://a.test/workload"));
    assert_eq!(svid.chain(), leaf.chain().as_slice());
    assert_eq!(
        peer_spiffe_id(svid.chain()).unwrap(),
        id("spiffe://a.test/workload")
    );

    // PEM input gives the same SVID.
    let pem = pem_of(&leaf.cert);
    let from_pem = Svid::from_pem(pem.as_bytes(), leaf.key.serialize_pem().as_bytes()).unwrap();
    assert_eq!(from_pem.serial(), svid.serial());
    assert_eq!(from_pem.not_after(), svid.not_after());

    // A key that is not the leaf's.
    let other = ca.svid("spiffe://a.test/workload");
    let err = Svid::from_der(&leaf.chain_der(), &other.key_der()).unwrap_err();
    assert!(matches!(err, IdentityError::PrivateKey(_)), "{err}");

    // A leaf that breaks the X509-SVID rules is refused at construction.
    let mut spec = LeafSpec::svid("spiffe://a.test/workload");
    spec.is_ca = true;
    let ca_leaf = ca.issue(&spec);
    let err = Svid::from_der(&ca_leaf.chain_der(), &ca_leaf.key_der()).unwrap_err();
    assert!(matches!(err, IdentityError::Svid(SvidError::LeafIsCa)), "{err}");

    assert!(matches!(
        Svid::from_der(&[], &leaf.key_der()),
        Err(IdentityError::EmptyChain)
    ));
}

#[test]
fn bundles_round_trip_through_pem_and_der() {
    let ca = Ca::root("ca a");
    let other = Ca::root("ca a next");
    let bundle = Bundle::new(td("a.test"), vec![ca.cert.clone(), other.cert.clone()]).unwrap();
    let pem = bundle.to_pem();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    assert!(pem.lines().all(|line| line.len() <= 64));
    let again = Bundle::from_pem(td("a.test"), pem.as_bytes()).unwrap();
    assert_eq!(again, bundle);
    let concat: Vec<u8> = bundle.roots().iter().flat_map(|r| r.as_ref().to_vec()).collect();
    let from_der = Bundle::from_der_concat(td("a.test"), &concat).unwrap();
    assert_eq!(from_der, bundle);
    assert_eq!(from_der.trust_domain(), &td("a.test"));

    assert!(matches!(
        Bundle::new(td("a.test"), vec![]),
        Err(IdentityError::EmptyBundle { .. })
    ));
    assert!(matches!(
        Bundle::from_der_concat(td("a.test"), &concat[..concat.len() - 1]),
        Err(IdentityError::Der { .. })
    ));
    assert!(matches!(
        Bundle::new(td("a.test"), vec![CertificateDer::from(vec![0x30, 0x00])]),
        Err(IdentityError::BadRoot { index: 0, .. })
    ));
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    // Reuse the bundle encoder: a one-root bundle is one CERTIFICATE block.
    Bundle::new(td("a.test"), vec![cert.clone().into_owned()])
        .unwrap()
        .to_pem()
}
