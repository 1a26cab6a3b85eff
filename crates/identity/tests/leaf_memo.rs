//! The memo of leaves that passed the leaf rules (`validate.rs`): it is keyed
//! by the whole certificate, so no other byte string — a twin with the same
//! key and serial number, one flipped byte — ever gets a remembered verdict,
//! and every rule that needs a bundle or a clock still runs at each call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Ca, KeyUsageSpec, LeafSpec, bundles, now_secs, td, unix};
use rustls::pki_types::CertificateDer;
use soma_identity::{AllowedTrustDomains, PeerRole, SvidError, peer_spiffe_id, validate_svid};

struct Case {
    name: &'static str,
    chain: Vec<CertificateDer<'static>>,
    expected: Result<&'static str, SvidError>,
}

#[test]
fn a_remembered_leaf_vouches_for_its_exact_bytes_only() {
    let now = now_secs();
    let ca = Ca::root("ca a");
    let set = bundles(vec![ca.bundle("a.test")]);
    let allowed = AllowedTrustDomains::local(&td("a.test"));
    let validate = |chain: &[CertificateDer<'static>]| {
        validate_svid(chain, &set, &allowed, unix(now), PeerRole::Client).map(|id| id.to_string())
    };

    // Remembered: validated twice, and its ID read back by peer_spiffe_id.
    let spec = LeafSpec::svid("spiffe://a.test/workload");
    let good = ca.issue(&spec);
    assert_eq!(validate(&good.chain()), Ok("spiffe://a.test/workload".to_owned()));
    assert_eq!(validate(&good.chain()), Ok("spiffe://a.test/workload".to_owned()));
    assert_eq!(
        peer_spiffe_id(&good.chain()).unwrap().to_string(),
        "spiffe://a.test/workload"
    );

    // Twins of the remembered leaf: same key, same serial number, same
    // issuer and validity, one rule-relevant difference each. A memo keyed
    // by serial, issuer or public key would hand them the remembered ID.
    let twin = |f: &dyn Fn(&mut LeafSpec)| {
        let mut s = spec.clone();
        f(&mut s);
        ca.issue_twin(&s, &good).chain()
    };
    // One byte of the URI SAN changed in the remembered leaf itself: the ID
    // read from it is the new one (and its signature no longer holds).
    let flipped = {
        let mut der = good.cert.as_ref().to_vec();
        // "a.test/workload" occurs in the URI SAN only (the subject's
        // organization is "SomaStack test workload").
        let at = der
            .windows(b"a.test/workload".len())
            .position(|w| w == b"a.test/workload")
            .expect("the URI SAN is in the certificate");
        der[at + "a.test/".len()] = b'W';
        vec![CertificateDer::from(der)]
    };
    assert_eq!(
        peer_spiffe_id(&flipped).unwrap().to_string(),
        "spiffe://a.test/Workload"
    );

    let cases = vec![
        Case {
            name: "twin with another SPIFFE ID",
            chain: twin(&|s| s.uris = vec!["spiffe://a.test/other".to_owned()]),
            expected: Ok("spiffe://a.test/other"),
        },
        Case {
            name: "twin that is a CA",
            chain: twin(&|s| s.is_ca = true),
            expected: Err(SvidError::LeafIsCa),
        },
        Case {
            name: "twin without digitalSignature",
            chain: twin(&|s| s.key_usage = KeyUsageSpec::NoDigitalSignature),
            expected: Err(SvidError::MissingDigitalSignature),
        },
        Case {
            name: "twin with two URI SANs",
            chain: twin(&|s| s.uris.push("spiffe://a.test/second".to_owned())),
            expected: Err(SvidError::MultipleUriSans { count: 2 }),
        },
        Case {
            name: "remembered leaf with one byte of its URI changed",
            chain: flipped.clone(),
            expected: Err(SvidError::BadSignature),
        },
    ];
    for case in cases {
        let got = validate(&case.chain);
        assert_eq!(
            got,
            case.expected.clone().map(str::to_owned),
            "case {:?}",
            case.name
        );
        // Judged once more, after the twin: the remembered leaf is still
        // itself, and the twin judged alike again.
        assert_eq!(
            validate(&good.chain()),
            Ok("spiffe://a.test/workload".to_owned()),
            "after {:?}",
            case.name
        );
        assert_eq!(
            validate(&case.chain),
            case.expected.map(str::to_owned),
            "case {:?}, again",
            case.name
        );
    }
}

#[test]
fn a_remembered_leaf_still_meets_the_clock_the_bundle_and_the_role() {
    let now = now_secs();
    let ca = Ca::root("ca a");
    let rogue = Ca::root("rogue");
    let spec = LeafSpec {
        ekus: vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        ..LeafSpec::svid("spiffe://a.test/workload")
    };
    let leaf = ca.issue(&spec);
    let chain = leaf.chain();
    let allowed = AllowedTrustDomains::local(&td("a.test"));
    let own = bundles(vec![ca.bundle("a.test")]);
    let check = |set: &soma_identity::BundleSet, at: u64, role: PeerRole| {
        validate_svid(&chain, set, &allowed, unix(at), role).map(|id| id.to_string())
    };
    // Remembered now.
    assert_eq!(
        check(&own, now, PeerRole::Server),
        Ok("spiffe://a.test/workload".to_owned())
    );
    // After its expiry.
    assert!(matches!(
        check(&own, spec.not_after + 60, PeerRole::Server),
        Err(SvidError::Expired { .. })
    ));
    // Against a bundle that does not hold its issuer (a rotated trust bundle).
    assert_eq!(
        check(&bundles(vec![rogue.bundle("a.test")]), now, PeerRole::Server),
        Err(SvidError::UnknownIssuer {
            trust_domain: td("a.test")
        })
    );
    // In a trust domain not allowed here.
    assert_eq!(
        validate_svid(
            &chain,
            &own,
            &AllowedTrustDomains::local(&td("b.test")),
            unix(now),
            PeerRole::Server
        ),
        Err(SvidError::TrustDomainNotAllowed {
            trust_domain: td("a.test")
        })
    );
    // For the role its EKU does not allow.
    assert_eq!(
        check(&own, now, PeerRole::Client),
        Err(SvidError::ExtendedKeyUsage { role: "client" })
    );
    // And still accepted as it was.
    assert_eq!(
        check(&own, now, PeerRole::Server),
        Ok("spiffe://a.test/workload".to_owned())
    );
}
