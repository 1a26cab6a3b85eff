//! Which process gets which SPIFFE ID by its process id (the processes a
//! supervisor such as `soma up` starts itself).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use soma_identity::SpiffeId;
use tracing::{info, warn};

use crate::process;

/// Attestation table of supervised processes: the SPIFFE ID each process is
/// entitled to, keyed by the process id the kernel reports for the caller's
/// Unix socket connection (`SO_PEERCRED`).
///
/// A pid is bound to the start time its process had when it was registered
/// (field 22 of `/proc/<pid>/stat`) and to a pidfd of that process. Every
/// lookup — each attestation and each rotation of an open stream — reads the
/// start time again and asks the pidfd whether its process has exited: a
/// process that has since taken over the number (the registered one having
/// died, even by SIGKILL, without being unregistered) gets nothing, and the
/// stale entry is dropped. The pidfd matters when the successor starts within
/// the same clock tick (10 ms) as the registered process did, which a root
/// user forcing the pid can arrange: then only the pidfd tells them apart.
///
/// Cheap to clone: clones share one table.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    entries: Arc<RwLock<HashMap<u32, PidEntry>>>,
}

/// One registered process.
#[derive(Clone, Debug)]
struct PidEntry {
    id: SpiffeId,
    process: Arc<process::Handle>,
}

impl Registry {
    /// An empty registry: nobody gets an identity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entitles the process that now runs as `pid` to `id`, replacing any
    /// previous entry for the number. The process is recorded with its start
    /// time; if it is already gone nothing is registered (it could never be
    /// attested anyway).
    pub fn register_pid(&self, pid: u32, id: SpiffeId) {
        let process = match process::Handle::open(pid) {
            Ok(handle) => Arc::new(handle),
            Err(e) => {
                warn!(pid, spiffe_id = %id, error = %e, "cannot read the process; not registered");
                return;
            }
        };
        info!(pid, start_time = process.start_time, spiffe_id = %id, "registered workload");
        self.write().insert(pid, PidEntry { id, process });
    }

    /// Removes the entry of process `pid` (for instance when it exits, before
    /// the kernel can reuse the pid).
    pub fn unregister_pid(&self, pid: u32) {
        if let Some(entry) = self.write().remove(&pid) {
            info!(pid, spiffe_id = %entry.id, "unregistered workload");
        }
    }

    /// The SPIFFE ID the process now running as `pid` is entitled to, if it
    /// is the very process that was registered. A process with another start
    /// time (or none: the pid is free) gets `None`, and the entry is dropped.
    pub fn lookup(&self, pid: u32) -> Option<SpiffeId> {
        let entry = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .cloned()?;
        match entry.process.is_running_as(pid) {
            Ok(()) => Some(entry.id),
            Err(reason) => {
                warn!(
                    pid,
                    spiffe_id = %entry.id,
                    reason,
                    "pid no longer runs the registered process; registration dropped"
                );
                // Only this entry: a new registration made meanwhile stays.
                let mut entries = self.write();
                if entries
                    .get(&pid)
                    .is_some_and(|e| Arc::ptr_eq(&e.process, &entry.process))
                {
                    entries.remove(&pid);
                }
                None
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, PidEntry>> {
        // A panic while holding the lock cannot leave the map half updated
        // (insert and remove are single calls), so a poisoned lock is usable.
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}
