//! Binding the Workload API socket.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use tokio::net::UnixListener;
use tracing::info;

use crate::error::CaError;
use crate::files;

/// Mode of the parent directory when this function creates it: the owner may
/// add and remove entries, the group may only reach the socket.
const PARENT_DIR_MODE: u32 = 0o750;

/// Mode of the socket: owner and group may connect (connecting needs write
/// permission); others may not.
const SOCKET_MODE: u32 = 0o770;

/// Binds a Unix socket at `path` for the Workload API.
///
/// A missing parent directory is created with mode 0750 (an existing one is
/// left alone). A socket file left behind by a previous run is removed, but
/// only once a connection attempt shows that nobody serves it any more; a
/// live socket, or a path that is not a socket at all, is an error. The
/// socket itself gets mode 0770.
///
/// Must be called within a Tokio runtime.
pub fn bind_socket(path: &Path) -> Result<UnixListener, CaError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        files::create_dir(parent, PARENT_DIR_MODE)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(CaError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "removing stale workload api socket");
                fs::remove_file(path).map_err(CaError::io("cannot remove stale socket", path))?;
            }
            Err(e) => return Err(CaError::io("cannot probe existing socket", path)(e)),
        },
        Ok(_) => {
            return Err(CaError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(CaError::io("cannot inspect", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(CaError::io("cannot bind", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(CaError::io("cannot set permissions of", path))?;
    info!(path = %path.display(), "bound workload api socket");
    Ok(listener)
}
