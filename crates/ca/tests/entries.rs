#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Registration entries with unix selectors, matched against the real test
//! process (uid and gid from SO_PEERCRED, its binary from /proc/<pid>/exe)
//! over a real Unix socket.

mod common;

use std::time::Duration;

use ring::digest;
use soma_ca::{CaError, Selector};
use soma_proto::workload::X509svidRequest;
use tonic::Code;

use common::{TestServer, raw_client, spiffe_id, with_header};

const HOUR: Duration = Duration::from_secs(3600);

const NO_ENTRY: &str = "no identity issued: the caller matches no registration entry";

fn own_sha256() -> String {
    let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    digest::digest(&digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn selectors(list: &[String]) -> Vec<Selector> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// What FetchX509SVID answers the test process: its SPIFFE ID, or the code
/// and message of the refusal.
async fn fetch(server: &TestServer) -> Result<String, (Code, String)> {
    let mut client = raw_client(&server.socket).await;
    match client.fetch_x509svid(with_header(X509svidRequest {})).await {
        Ok(response) => {
            let message = response.into_inner().message().await.unwrap().unwrap();
            Ok(message.svids[0].spiffe_id.clone())
        }
        Err(status) => Err((status.code(), status.message().to_owned())),
    }
}

#[tokio::test]
async fn the_first_entry_whose_selectors_all_match_gives_the_identity() {
    struct Case {
        name: &'static str,
        selectors: Vec<String>,
        expected: Result<&'static str, (Code, &'static str)>,
    }
    // The test runs as root (uid 0, gid 0), as the suite does here.
    let uid = rustix_uid();
    let exe = std::env::current_exe().unwrap().display().to_string();
    let sha = own_sha256();
    let other_sha = "0".repeat(64);
    let granted = "spiffe://somastack.test/svc/by-entry";
    let denied = Err((Code::PermissionDenied, NO_ENTRY));
    let cases = [
        Case {
            name: "uid",
            selectors: vec![format!("unix:uid:{uid}")],
            expected: Ok(granted),
        },
        Case {
            name: "another uid",
            selectors: vec![format!("unix:uid:{}", uid + 1000)],
            expected: denied,
        },
        Case {
            name: "gid",
            selectors: vec![format!("unix:gid:{}", rustix_gid())],
            expected: Ok(granted),
        },
        Case {
            name: "path",
            selectors: vec![format!("unix:path:{exe}")],
            expected: Ok(granted),
        },
        Case {
            name: "another path",
            selectors: vec!["unix:path:/usr/bin/python3".to_owned()],
            expected: denied,
        },
        Case {
            name: "sha256",
            selectors: vec![format!("unix:sha256:{sha}")],
            expected: Ok(granted),
        },
        Case {
            name: "another sha256",
            selectors: vec![format!("unix:sha256:{other_sha}")],
            expected: denied,
        },
        Case {
            name: "all four",
            selectors: vec![
                format!("unix:uid:{uid}"),
                format!("unix:gid:{}", rustix_gid()),
                format!("unix:path:{exe}"),
                format!("unix:sha256:{sha}"),
            ],
            expected: Ok(granted),
        },
        Case {
            name: "uid matches, sha256 does not",
            selectors: vec![format!("unix:uid:{uid}"), format!("unix:sha256:{other_sha}")],
            expected: denied,
        },
    ];
    for case in cases {
        let server = TestServer::start(HOUR).await;
        let store = server.authority.entries();
        store
            .create(spiffe_id("/svc/by-entry"), selectors(&case.selectors))
            .unwrap();
        let got = fetch(&server).await;
        let expected = case
            .expected
            .map(str::to_owned)
            .map_err(|(c, m)| (c, m.to_owned()));
        assert_eq!(got, expected, "{}", case.name);
    }
}

#[tokio::test]
async fn entries_take_effect_and_stop_while_the_server_runs() {
    let server = TestServer::start(HOUR).await;
    let store = server.authority.entries();
    assert_eq!(
        fetch(&server).await,
        Err((Code::PermissionDenied, NO_ENTRY.to_owned()))
    );
    let first = store
        .create(
            spiffe_id("/svc/first"),
            selectors(&[format!("unix:uid:{}", rustix_uid())]),
        )
        .unwrap();
    store
        .create(
            spiffe_id("/svc/second"),
            selectors(&[format!("unix:gid:{}", rustix_gid())]),
        )
        .unwrap();
    // Creation order decides between two matching entries.
    assert_eq!(fetch(&server).await.unwrap(), "spiffe://somastack.test/svc/first");
    assert!(store.delete(&first.entry_id).unwrap());
    assert!(!store.delete(&first.entry_id).unwrap());
    assert_eq!(
        fetch(&server).await.unwrap(),
        "spiffe://somastack.test/svc/second"
    );
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|e| e.spiffe_id.to_string())
        .collect();
    assert_eq!(listed, ["spiffe://somastack.test/svc/second"]);
}

#[tokio::test]
async fn concurrent_creates_lose_nothing() {
    let server = TestServer::start(HOUR).await;
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = server.authority.entries();
            std::thread::spawn(move || {
                store
                    .create(spiffe_id(&format!("/svc/{i}")), vec![Selector::Uid(i)])
                    .unwrap()
            })
        })
        .collect();
    let mut created: Vec<String> = threads.into_iter().map(|t| t.join().unwrap().entry_id).collect();
    let mut listed: Vec<String> = server
        .authority
        .entries()
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.entry_id)
        .collect();
    created.sort();
    listed.sort();
    assert_eq!(created, listed);
}

#[tokio::test]
async fn a_hostile_entries_file_is_refused_whole() {
    struct Case {
        name: &'static str,
        file: &'static str,
        reason: &'static str,
    }
    let cases = [
        Case {
            name: "unknown field",
            file: r#"{"version":1,"entries":[],"admin":true}"#,
            reason: "unknown field `admin`, expected `version` or `entries` at line 1 column 33",
        },
        Case {
            name: "other version",
            file: r#"{"version":2,"entries":[]}"#,
            reason: "version 2, expected 1",
        },
        Case {
            name: "no selector",
            file: r#"{"version":1,"entries":[{"id":"0123456789abcdef0123456789abcdef","spiffe_id":"spiffe://somastack.test/a","selectors":[]}]}"#,
            reason: "entry for spiffe://somastack.test/a has no selector",
        },
        Case {
            name: "bad selector",
            file: r#"{"version":1,"entries":[{"id":"0123456789abcdef0123456789abcdef","spiffe_id":"spiffe://somastack.test/a","selectors":["unix:uid:x"]}]}"#,
            reason: "entry 0123456789abcdef0123456789abcdef: selector \"unix:uid:x\": uid must be a decimal number",
        },
        Case {
            name: "bad entry id",
            file: r#"{"version":1,"entries":[{"id":"x","spiffe_id":"spiffe://somastack.test/a","selectors":["unix:uid:0"]}]}"#,
            reason: "entry id \"x\" is not 32 lowercase hex digits",
        },
    ];
    for case in cases {
        let server = TestServer::start(HOUR).await;
        let store = server.authority.entries();
        std::fs::write(store.path(), case.file).unwrap();
        match store.list() {
            Err(CaError::InvalidEntries { reason, .. }) => assert_eq!(reason, case.reason, "{}", case.name),
            other => panic!("{}: {other:?}", case.name),
        }
        assert_eq!(
            fetch(&server).await,
            Err((Code::Internal, "registration entries unreadable".to_owned())),
            "{}",
            case.name
        );
    }
    // A foreign trust domain is refused at creation.
    let server = TestServer::start(HOUR).await;
    let foreign = soma_identity::SpiffeId::parse("spiffe://elsewhere.test/svc").unwrap();
    let err = server
        .authority
        .entries()
        .create(foreign, vec![Selector::Uid(0)])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "spiffe://elsewhere.test/svc is not in trust domain somastack.test"
    );
}

fn rustix_uid() -> u32 {
    status_field("Uid:")
}

fn rustix_gid() -> u32 {
    status_field("Gid:")
}

/// The real id from /proc/self/status (the first of the four numbers).
fn status_field(name: &str) -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(name)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
