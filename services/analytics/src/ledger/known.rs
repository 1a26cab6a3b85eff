//! What this process knows of the ledger, authenticated: every leaf hash
//! (indexed in a Merkle tree, for proofs) and, beside each, whose leaf it
//! is — tenant, kind and event time.
//!
//! An export must prove that no leaf of its tenant inside its window lacks
//! its row. The database cannot be asked which leaves those are: an
//! attacker with write access who deletes a row and rewrites its leaf's
//! tenant (or time, or kind) makes the leaf invisible to any query filtered
//! on those columns, MAC or no MAC, since a filtered query never reads it.
//! This index is the answer instead: it is built from leaf rows whose MAC
//! verified (at start-up, or when catching up with another process's
//! appends) and from the writer's own appends, and what is in memory is
//! beyond the reach of a database writer. A leaf row whose MAC fails is
//! kept as *unknown*: no export can then be proven complete, and every
//! export names it.
//!
//! Memory: 16 bytes per leaf beside the tree's ~64 (the tree holds just
//! under two hashes per leaf); tenants are interned.

use std::collections::HashMap;

use soma_ledger::{Hash, MerkleTree};

use crate::tables;

/// Whose leaf one index is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fact {
    time: i64,
    tenant: u32,
    /// Index of the kind among the ledgered tables; [`UNKNOWN`] when the
    /// leaf row failed its MAC.
    kind: u8,
}

/// The kind of a leaf whose owner is not authenticated.
const UNKNOWN: u8 = u8::MAX;

/// The authenticated view of the ledger (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Known {
    tree: MerkleTree,
    facts: Vec<Fact>,
    tenants: Vec<Box<str>>,
    tenant_ids: HashMap<Box<str>, u32>,
    /// How many leaves are [`Owner::Unknown`] (their row failed its MAC).
    unknown: u64,
}

/// What is known of one leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner<'a> {
    /// Its tenant, kind and event time, authenticated.
    Known {
        tenant: &'a str,
        kind: &'static str,
        time: i64,
    },
    /// Its leaf row failed its MAC: nobody can tell whose it is.
    Unknown,
}

/// A leaf an export's window should hold and does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gap {
    /// A leaf of the export's tenant, kind and window that no row claimed.
    Missing(u64),
    /// A leaf whose owner is unknown, which may be one.
    Unknown(u64),
}

impl Known {
    /// The leaves known.
    pub(crate) fn size(&self) -> u64 {
        self.tree.size()
    }

    /// How many leaves have no authenticated owner: each is a tampered or
    /// damaged leaf row.
    pub(crate) fn unknown(&self) -> u64 {
        self.unknown
    }

    /// The Merkle tree of the known leaves.
    pub(crate) fn tree(&self) -> &MerkleTree {
        &self.tree
    }

    /// The hash of leaf `index`.
    pub(crate) fn hash(&self, index: u64) -> Option<&Hash> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.tree.leaves().get(i))
    }

    /// Whose leaf `index` is.
    pub(crate) fn owner(&self, index: u64) -> Option<Owner<'_>> {
        let fact = usize::try_from(index).ok().and_then(|i| self.facts.get(i))?;
        Some(match kind_name(fact.kind) {
            Some(kind) => Owner::Known {
                tenant: self.tenants.get(fact.tenant as usize).map_or("", |t| t),
                kind,
                time: fact.time,
            },
            None => Owner::Unknown,
        })
    }

    /// Appends a leaf: its hash and, when authenticated, its tenant, kind
    /// and time (`None`: a leaf row whose MAC failed).
    pub(crate) fn push(&mut self, hash: Hash, owner: Option<(&str, &str, i64)>) {
        let fact = match owner.and_then(|(tenant, kind, time)| Some((tenant, kind_code(kind)?, time))) {
            Some((tenant, kind, time)) => Fact {
                time,
                tenant: self.intern(tenant),
                kind,
            },
            None => {
                self.unknown += 1;
                Fact {
                    time: 0,
                    tenant: 0,
                    kind: UNKNOWN,
                }
            }
        };
        self.tree.push(hash);
        self.facts.push(fact);
    }

    fn intern(&mut self, tenant: &str) -> u32 {
        if let Some(id) = self.tenant_ids.get(tenant) {
            return *id;
        }
        // Four billion tenants are beyond any deployment; the last id is
        // shared rather than wrapped.
        let id = u32::try_from(self.tenants.len()).unwrap_or(u32::MAX);
        self.tenants.push(tenant.into());
        self.tenant_ids.insert(tenant.into(), id);
        id
    }

    /// The index of the first leaf below `below` whose hash is `hash` (for
    /// naming the leaf a row was moved away from; a linear scan, on the
    /// failure path only).
    pub(crate) fn position(&self, hash: &Hash, below: u64) -> Option<u64> {
        let below = usize::try_from(below).unwrap_or(usize::MAX);
        self.tree
            .leaves()
            .iter()
            .take(below)
            .position(|h| h == hash)
            .map(|i| i as u64)
    }

    /// The first leaf below `below` that an export of `tenant`'s `kind`
    /// rows in `[from, to)` should have seen and did not, or whose owner is
    /// unknown.
    pub(crate) fn gap(
        &self,
        tenant: &str,
        kind: &str,
        (from, to): (i64, i64),
        below: u64,
        seen: &Seen,
    ) -> Option<Gap> {
        let below = usize::try_from(below).unwrap_or(usize::MAX).min(self.facts.len());
        let tenant = self.tenant_ids.get(tenant).copied();
        let kind = kind_code(kind);
        for (i, fact) in self.facts[..below].iter().enumerate() {
            if fact.kind == UNKNOWN {
                return Some(Gap::Unknown(i as u64));
            }
            if Some(fact.tenant) == tenant
                && Some(fact.kind) == kind
                && (from..to).contains(&fact.time)
                && !seen.contains(i as u64)
            {
                return Some(Gap::Missing(i as u64));
            }
        }
        None
    }
}

/// The code of a ledgered kind: its position among the ledgered tables.
fn kind_code(kind: &str) -> Option<u8> {
    tables::registered()
        .filter(|t| t.ledgered)
        .position(|t| t.kind == kind)
        .and_then(|i| u8::try_from(i).ok())
        .filter(|code| *code != UNKNOWN)
}

fn kind_name(code: u8) -> Option<&'static str> {
    tables::registered()
        .filter(|t| t.ledgered)
        .nth(usize::from(code))
        .map(|t| t.kind)
}

/// The ledger indices an export has seen, one bit each.
#[derive(Debug)]
pub(crate) struct Seen(Vec<u64>);

impl Seen {
    /// Room for indices below `size`.
    pub(crate) fn below(size: u64) -> Self {
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(0);
        Self(vec![0; words])
    }

    /// Marks `index`; `false` when it was already marked.
    pub(crate) fn insert(&mut self, index: u64) -> bool {
        let Some(word) = usize::try_from(index / 64).ok().and_then(|w| self.0.get_mut(w)) else {
            return false;
        };
        let bit = 1u64 << (index % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    fn contains(&self, index: u64) -> bool {
        usize::try_from(index / 64)
            .ok()
            .and_then(|w| self.0.get(w))
            .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use soma_ledger::Hash;

    use super::{Gap, Known, Owner, Seen};

    #[test]
    fn a_gap_is_the_first_unseen_leaf_of_the_tenant_kind_and_window() {
        let mut known = Known::default();
        let h = |n: u8| Hash::from_slice(&[n; 32]).unwrap();
        known.push(h(0), Some(("acme", "billing_event", 10)));
        known.push(h(1), Some(("globex", "billing_event", 10)));
        known.push(h(2), Some(("acme", "capsule_run", 10)));
        known.push(h(3), Some(("acme", "billing_event", 99)));
        known.push(h(4), Some(("acme", "billing_event", 11)));
        let mut seen = Seen::below(5);
        assert!(seen.insert(0));
        assert!(!seen.insert(0), "marked twice");
        assert_eq!(
            known.gap("acme", "billing_event", (0, 50), 5, &seen),
            Some(Gap::Missing(4))
        );
        // Below the cut only.
        assert_eq!(known.gap("acme", "billing_event", (0, 50), 4, &seen), None);
        assert!(seen.insert(4));
        assert_eq!(known.gap("acme", "billing_event", (0, 50), 5, &seen), None);
        assert_eq!(known.gap("nobody", "billing_event", (0, 50), 5, &seen), None);
        assert_eq!(
            known.owner(1),
            Some(Owner::Known {
                tenant: "globex",
                kind: "billing_event",
                time: 10
            })
        );
        known.push(h(5), None);
        assert_eq!(known.owner(5), Some(Owner::Unknown));
        assert_eq!(
            known.gap("acme", "billing_event", (0, 50), 6, &Seen::below(6)),
            Some(Gap::Missing(0))
        );
        let all = {
            let mut s = Seen::below(6);
            for i in 0..6 {
                s.insert(i);
            }
            s
        };
        assert_eq!(
            known.gap("acme", "billing_event", (0, 50), 6, &all),
            Some(Gap::Unknown(5))
        );
        assert_eq!(known.position(&h(3), 6), Some(3));
        assert_eq!(known.position(&h(3), 3), None);
        assert_eq!(known.owner(6), None);
    }
}
