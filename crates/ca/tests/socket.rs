#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Binding the Workload API socket: stale sockets are replaced, live ones and
//! other files are not.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use soma_ca::{CaError, bind_socket};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn bind_creates_parent_and_restricts_modes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a").join("b").join("api.sock");
    let _listener = bind_socket(&socket).unwrap();
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&socket), 0o770);
    // 0750 at most; the process umask may only remove bits.
    assert_eq!(mode(&dir.path().join("a").join("b")) & !0o750, 0);
    assert_eq!(mode(&dir.path().join("a")) & !0o750, 0);
}

#[tokio::test]
async fn existing_paths() {
    struct Case {
        name: &'static str,
        /// Prepares the path; returns whatever must stay alive during the bind.
        prepare: fn(&Path) -> Option<tokio::net::UnixListener>,
        /// `None`: the bind succeeds.
        expected: Option<fn(&CaError) -> bool>,
    }
    let cases = [
        Case {
            name: "stale socket of a previous run",
            prepare: |p| {
                drop(std::os::unix::net::UnixListener::bind(p).unwrap());
                None
            },
            expected: None,
        },
        Case {
            name: "live socket",
            prepare: |p| Some(tokio::net::UnixListener::bind(p).unwrap()),
            expected: Some(|e| matches!(e, CaError::SocketInUse { .. })),
        },
        Case {
            name: "regular file",
            prepare: |p| {
                std::fs::write(p, "keep me").unwrap();
                None
            },
            expected: Some(|e| matches!(e, CaError::NotASocket { .. })),
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let _alive = (case.prepare)(&path);
        let result = bind_socket(&path);
        match (result, case.expected) {
            (Ok(_), None) => {}
            (Err(e), Some(expected)) => {
                assert!(expected(&e), "{}: unexpected error {e:?}", case.name);
                assert!(
                    e.to_string().contains(&path.display().to_string()),
                    "{}: {e}",
                    case.name
                );
            }
            (Ok(_), Some(_)) => panic!("{}: bind succeeded", case.name),
            (Err(e), None) => panic!("{}: {e:?}", case.name),
        }
        if case.name == "regular file" {
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                "keep me",
                "the file is left alone"
            );
        }
    }
}
