//! The independent clients the interop tests run.

use std::path::{Path, PathBuf};

/// The interpreter with the interop clients installed (grpcio, PyJWT,
/// `cryptography`, ...; grpcurl and schemathesis beside it): `SOMA_PYTHON`
/// if set (it must exist), else the project's `.venv`, which
/// `scripts/test.sh` creates; else a loud failure naming both.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SOMA_PYTHON") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "SOMA_PYTHON={} does not exist", p.display());
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "the interop tests need Python with the interop clients: run the suite with scripts/test.sh \
         (it creates {}), or set SOMA_PYTHON",
        venv.display()
    );
    venv
}
