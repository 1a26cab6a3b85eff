//! Which workload gets which SPIFFE ID.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use soma_identity::SpiffeId;
use tracing::info;

/// Attestation table: the SPIFFE ID each process is entitled to, keyed by the
/// process id the kernel reports for the caller's Unix socket connection
/// (`SO_PEERCRED`). A caller whose pid is not registered gets no identity.
///
/// Cheap to clone: clones share one table.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    entries: Arc<RwLock<HashMap<u32, SpiffeId>>>,
}

impl Registry {
    /// An empty registry: nobody gets an identity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entitles process `pid` to `id`, replacing any previous entry for it.
    pub fn register_pid(&self, pid: u32, id: SpiffeId) {
        info!(pid, spiffe_id = %id, "registered workload");
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, id);
    }

    /// Removes the entry of process `pid` (for instance when it exits, before
    /// the kernel can reuse the pid).
    pub fn unregister_pid(&self, pid: u32) {
        if let Some(id) = self
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid)
        {
            info!(pid, spiffe_id = %id, "unregistered workload");
        }
    }

    /// The SPIFFE ID process `pid` is entitled to, if any.
    pub fn lookup(&self, pid: u32) -> Option<SpiffeId> {
        // A panic while holding the lock cannot leave the map half updated
        // (insert and remove are single calls), so a poisoned lock is usable.
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .cloned()
    }
}
