//! File writes that readers never observe half done, with the mode set at
//! creation (never widened afterwards).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use crate::error::CaError;

/// Mode of files holding a private key: owner read/write only.
pub(crate) const PRIVATE_FILE: u32 = 0o600;

/// Mode of public files (certificates, bundles).
pub(crate) const PUBLIC_FILE: u32 = 0o644;

/// Creates `dir` and its missing parents with `mode` (existing directories are
/// left as they are: their owner chose their mode).
pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), CaError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(CaError::io("cannot create directory", dir))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and
/// a rename, so that a reader sees either the old content or the new one.
///
/// The temporary file is created fresh (`O_EXCL`) with `mode`, so a private
/// key is never readable by others, not even for an instant.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover from a crashed run may exist with another mode: remove it
    // rather than reuse it.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CaError::io("cannot remove", &tmp)(e)),
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(CaError::io("cannot create", &tmp))?;
        file.write_all(bytes).map_err(CaError::io("cannot write", &tmp))?;
        file.sync_all().map_err(CaError::io("cannot write", &tmp))?;
        fs::rename(&tmp, path).map_err(CaError::io("cannot rename into", path))
    })();
    if result.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = fs::remove_file(&tmp);
    }
    result
}
