#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Rotation of the authority's root and JWT key, as a SPIRE server rotates
//! its X.509 and JWT authorities: a prepared slot is published before it
//! signs, an activated one signs while the old one stays published until it
//! expires, every change reaches open Workload API streams, and a crash in
//! the middle of an activation is finished, not half-applied.

mod common;

use std::time::{Duration, SystemTime};

use serde_json::Value;
use soma_ca::{Authority, AuthorityOptions, CaError, SlotState};
use soma_proto::workload::{JwtBundlesRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest};

use common::{
    TestServer, jwt_svid, raw_client, spiffe_id, split_der, trust_domain, verify_as_client, with_header,
};

const HANG_GUARD: Duration = Duration::from_secs(20);

fn options(ca_ttl: Duration) -> AuthorityOptions {
    AuthorityOptions { ca_ttl }
}

/// The `kid`s of a JWKS document.
fn kids(jwks: &[u8]) -> Vec<String> {
    let jwks: Value = serde_json::from_slice(jwks).unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// The `kid` in a compact JWS's header.
fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn states(authority: &Authority) -> Vec<(SlotState, String)> {
    authority
        .slots()
        .into_iter()
        .map(|slot| (slot.state, slot.serial))
        .collect()
}

#[tokio::test]
async fn a_prepared_root_is_published_before_it_signs_and_a_retired_one_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    // The first root lives six seconds, so that the test can see it expire;
    // the ones prepared later live a minute.
    let authority =
        Authority::open_or_create_with(dir.path(), &trust_domain(), options(Duration::from_secs(6)))
            .unwrap()
            .with_options(options(Duration::from_secs(60)))
            .unwrap();
    let id = spiffe_id("/svc/gateway");
    let audience = vec!["billing".to_owned()];

    let slots = authority.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].state, SlotState::Active);
    let first_root = authority.bundle_der();
    let first_kid = slots[0].jwt_kid.clone();
    assert_eq!(kids(&authority.jwt_bundle()), vec![first_kid.clone()]);
    let old_jwt = authority
        .issue_jwt(&id, &audience, Duration::from_secs(300))
        .unwrap();
    assert_eq!(kid_of(&old_jwt.token), first_kid);

    // Prepared: both roots and both keys are published; the old ones still sign.
    let prepared = authority.prepare().unwrap();
    assert_eq!(prepared.state, SlotState::Prepared);
    let roots = split_der(&authority.bundle_der());
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0], first_root);
    let new_root = roots[1].clone();
    assert_eq!(
        kids(&authority.jwt_bundle()),
        vec![first_kid.clone(), prepared.jwt_kid.clone()]
    );
    let svid = authority
        .issue(&id, Duration::from_secs(60), Default::default())
        .unwrap();
    verify_as_client(&first_root, &svid.chain_der[0]).unwrap();
    verify_as_client(&new_root, &svid.chain_der[0]).unwrap_err();
    let jwt = authority
        .issue_jwt(&id, &audience, Duration::from_secs(300))
        .unwrap();
    assert_eq!(kid_of(&jwt.token), first_kid);
    match authority.prepare() {
        Err(CaError::AlreadyPrepared { serial }) => assert_eq!(serial, prepared.serial),
        other => panic!("a second prepare: {other:?}"),
    }
    assert_eq!(authority.bundle_der().len(), first_root.len() + new_root.len());

    // Activated: the new slot signs, the old one stays published.
    let active = authority.activate().unwrap();
    assert_eq!(active.serial, prepared.serial);
    assert_eq!(
        states(&authority)[0],
        (SlotState::Active, prepared.serial.clone())
    );
    assert_eq!(states(&authority)[1].0, SlotState::Retired);
    assert_eq!(split_der(&authority.bundle_der()).len(), 2);
    let svid = authority
        .issue(&id, Duration::from_secs(60), Default::default())
        .unwrap();
    verify_as_client(&new_root, &svid.chain_der[0]).unwrap();
    verify_as_client(&first_root, &svid.chain_der[0]).unwrap_err();
    let new_jwt = authority
        .issue_jwt(&id, &audience, Duration::from_secs(300))
        .unwrap();
    assert_eq!(kid_of(&new_jwt.token), prepared.jwt_kid);
    // A token the old key signed before the activation still validates.
    assert_eq!(
        authority
            .validate_jwt(&old_jwt.token, "billing")
            .unwrap()
            .spiffe_id,
        id
    );
    assert_eq!(
        authority
            .validate_jwt(&new_jwt.token, "billing")
            .unwrap()
            .spiffe_id,
        id
    );
    // ... and never outlives the key that signed it.
    assert!(
        old_jwt.expiry <= slots[0].not_after,
        "{old_jwt:?} outlives its key"
    );
    match authority.activate() {
        Err(e @ CaError::NothingPrepared { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "no prepared root beside {}: run `soma ca prepare` first",
                dir.path().join("ca/ca.pem").display()
            )
        ),
        other => panic!("an activation with nothing prepared: {other:?}"),
    }

    // Everything is on disk: another process opening the directory sees the same.
    let reopened = Authority::open_existing(dir.path(), &trust_domain()).unwrap();
    assert_eq!(states(&reopened), states(&authority));
    assert_eq!(reopened.bundle_der(), authority.bundle_der());
    assert_eq!(reopened.jwt_bundle(), authority.jwt_bundle());

    // Once the first root has expired, the next step of the schedule
    // removes it and its key from the bundles.
    let expiry = slots[0].not_after;
    tokio::time::sleep(
        expiry.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(200),
    )
    .await;
    assert!(
        authority.advance(SystemTime::now()).unwrap(),
        "pruning changes the bundles"
    );
    assert_eq!(authority.bundle_der(), new_root);
    assert_eq!(kids(&authority.jwt_bundle()), vec![prepared.jwt_kid.clone()]);
    assert_eq!(
        authority
            .validate_jwt(&old_jwt.token, "billing")
            .unwrap_err()
            .to_string(),
        format!("invalid jwt-svid: unknown key id {first_kid:?}")
    );
    assert_eq!(states(&authority), vec![(SlotState::Active, prepared.serial)]);
    assert!(
        !authority.advance(SystemTime::now()).unwrap(),
        "nothing left to do"
    );
}

#[test]
fn the_schedule_steps_at_half_and_five_sixths_of_the_lifetime_and_replaces_an_expired_root() {
    let dir = tempfile::tempdir().unwrap();
    let authority =
        Authority::open_or_create_with(dir.path(), &trust_domain(), options(Duration::from_secs(60)))
            .unwrap();
    let first = authority.slots().remove(0);
    let created = first.not_after - Duration::from_secs(60);
    // Before half the lifetime: nothing to do.
    assert!(!authority.advance(created + Duration::from_secs(29)).unwrap());
    assert_eq!(authority.slots().len(), 1);
    // At half: a slot is prepared, published, not active.
    assert!(authority.advance(created + Duration::from_secs(30)).unwrap());
    let slots = authority.slots();
    assert_eq!(slots[0].serial, first.serial);
    assert_eq!(slots[1].state, SlotState::Prepared);
    // Before five sixths: nothing more.
    assert!(!authority.advance(created + Duration::from_secs(49)).unwrap());
    // At five sixths: the prepared slot becomes active.
    assert!(authority.advance(created + Duration::from_secs(50)).unwrap());
    assert_eq!(
        states(&authority)[0],
        (SlotState::Active, slots[1].serial.clone())
    );
    assert_eq!(states(&authority)[1], (SlotState::Retired, first.serial.clone()));

    // An authority that nothing ran for a whole lifetime gets a fresh root
    // rather than refuse to start.
    let idle = tempfile::tempdir().unwrap();
    let authority =
        Authority::open_or_create_with(idle.path(), &trust_domain(), options(Duration::from_secs(60)))
            .unwrap();
    let first = authority.slots().remove(0);
    assert!(
        authority
            .advance(first.not_after + Duration::from_secs(1))
            .unwrap()
    );
    let slots = authority.slots();
    assert_eq!(slots[0].state, SlotState::Active);
    assert_ne!(slots[0].serial, first.serial);
}

#[test]
fn an_interrupted_activation_is_finished_when_the_authority_is_opened() {
    struct Case {
        name: &'static str,
        /// What a crash left in `ca/` after `prepare`.
        crash: fn(&std::path::Path),
        /// `Ok(true)`: the prepared slot is active; `Ok(false)`: the old
        /// one still is; `Err`: the error's text, with DIR for the data dir.
        expected: Result<bool, &'static str>,
    }
    let cases = [
        Case {
            name: "ca.key moved, then the crash",
            crash: |ca| std::fs::rename(ca.join("next/ca.key"), ca.join("ca.key")).unwrap(),
            expected: Ok(true),
        },
        Case {
            name: "ca.key and jwt.key moved, then the crash",
            crash: |ca| {
                std::fs::rename(ca.join("next/ca.key"), ca.join("ca.key")).unwrap();
                std::fs::rename(ca.join("next/jwt.key"), ca.join("jwt.key")).unwrap();
            },
            expected: Ok(true),
        },
        Case {
            name: "every file moved, the directory left",
            crash: |ca| {
                for name in ["ca.key", "jwt.key", "ca.pem"] {
                    std::fs::rename(ca.join("next").join(name), ca.join(name)).unwrap();
                }
            },
            expected: Ok(true),
        },
        Case {
            name: "nothing moved: still prepared",
            crash: |_| {},
            expected: Ok(false),
        },
        Case {
            name: "a key without its certificate",
            crash: |ca| std::fs::remove_file(ca.join("next/ca.pem")).unwrap(),
            expected: Err("invalid ca root in DIR/ca/next: holds a key without its certificate"),
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open_or_create(dir.path(), &trust_domain()).unwrap();
        let old = authority.slots().remove(0);
        let prepared = authority.prepare().unwrap();
        drop(authority);
        (case.crash)(&dir.path().join("ca"));
        let opened = Authority::open_existing(dir.path(), &trust_domain());
        match (case.expected, opened) {
            (Ok(activated), Ok(authority)) => {
                let active = authority.slots().remove(0);
                let expected = if activated { &prepared.serial } else { &old.serial };
                assert_eq!(&active.serial, expected, "{}", case.name);
                assert_eq!(active.state, SlotState::Active, "{}", case.name);
                // The active slot signs with a key that matches its root.
                let root = split_der(&authority.bundle_der())[0].clone();
                let svid = authority
                    .issue(&spiffe_id("/svc/a"), Duration::from_secs(60), Default::default())
                    .unwrap();
                verify_as_client(&root, &svid.chain_der[0]).unwrap_or_else(|e| panic!("{}: {e}", case.name));
                assert_eq!(
                    dir.path().join("ca/next").exists(),
                    !activated,
                    "{}: next/ after the open",
                    case.name
                );
            }
            (Err(text), Err(e)) => assert_eq!(
                e.to_string(),
                text.replace("DIR", &dir.path().display().to_string()),
                "{}",
                case.name
            ),
            (expected, got) => panic!("{}: expected {expected:?}, got {got:?}", case.name),
        }
    }
}

#[tokio::test]
async fn every_bundle_change_reaches_open_streams_and_old_tokens_stay_valid() {
    // SVIDs of four seconds, so that one is re-issued (by the new root)
    // soon after the activation.
    let mut server = TestServer::start_with(Duration::from_secs(4), AuthorityOptions::default()).await;
    let id = spiffe_id("/svc/gateway");
    server.registry.register_pid(std::process::id(), id.clone());
    let td = "spiffe://somastack.test".to_owned();
    let mut client = raw_client(&server.socket).await;
    let mut svids = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut x509_bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut jwt_bundles = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = svids.message().await.unwrap().unwrap();
    let first_root = first.svids[0].bundle.clone();
    assert_eq!(split_der(&first_root).len(), 1);
    assert_eq!(
        x509_bundles.message().await.unwrap().unwrap().bundles[&td],
        first_root
    );
    let first_kids = kids(&jwt_bundles.message().await.unwrap().unwrap().bundles[&td]);
    assert_eq!(first_kids.len(), 1);
    let old_jwt = jwt_svid(&mut client, "billing").await;

    // An operator prepares the next slot from another handle on the same
    // directory, as `soma ca prepare` does from another process.
    let operator = Authority::open_existing(server.dir.path(), &trust_domain()).unwrap();
    let prepared = operator.prepare().unwrap();
    let bundle = tokio::time::timeout(HANG_GUARD, x509_bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let roots = split_der(&bundle.bundles[&td]);
    assert_eq!(roots.len(), 2, "the x509 bundles stream sends the prepared root");
    assert_eq!(roots[0], first_root);
    let new_root = roots[1].clone();
    let jwks = tokio::time::timeout(HANG_GUARD, jwt_bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        kids(&jwks.bundles[&td]),
        vec![first_kids[0].clone(), prepared.jwt_kid.clone()],
        "the jwt bundles stream sends the prepared key"
    );
    // The SVID stream sends the bundle with both roots (a rotation of the
    // SVID may come first: wait for the message that carries the change).
    let with_both = loop {
        let message = tokio::time::timeout(HANG_GUARD, svids.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if split_der(&message.svids[0].bundle).len() == 2 {
            break message;
        }
    };
    // Still signed by the first root: the prepared one signs nothing yet.
    verify_as_client(&first_root, &split_der(&with_both.svids[0].x509_svid)[0]).unwrap();

    operator.activate().unwrap();
    // After the activation, the SVIDs come from the new root, and both
    // roots stay in the bundle.
    let by_new_root = loop {
        let message = tokio::time::timeout(HANG_GUARD, svids.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let leaf = split_der(&message.svids[0].x509_svid).remove(0);
        if verify_as_client(&new_root, &leaf).is_ok() {
            break message;
        }
        verify_as_client(&first_root, &leaf).unwrap();
    };
    let mut bundle_roots = split_der(&by_new_root.svids[0].bundle);
    bundle_roots.sort();
    let mut both = vec![first_root.clone(), new_root.clone()];
    both.sort();
    assert_eq!(bundle_roots, both);

    // New tokens carry the new key; one signed before still validates.
    let new_jwt = jwt_svid(&mut client, "billing").await;
    assert_eq!(kid_of(&new_jwt), prepared.jwt_kid);
    assert_eq!(kid_of(&old_jwt), first_kids[0]);
    for token in [&old_jwt, &new_jwt] {
        let validated = client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: "billing".to_owned(),
                svid: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(validated.spiffe_id, id.to_string());
    }

    drop((svids, x509_bundles, jwt_bundles, client));
    server.stop().await.unwrap();
}
