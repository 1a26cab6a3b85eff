//! Parsed bundles kept by the SHA-256 of their exact bytes.
//!
//! A run resolves the same installed bundle again and again; parsing it
//! (strict JSON, the canonical form compared byte for byte, the input
//! schema built) is the resolution's largest computation. A bundle parses
//! only from its canonical bytes, so the digest of the bytes read from the
//! database is the bundle's own digest: the key under which its parse is
//! kept. Bytes that differ in any way have another digest and are parsed
//! (or refused) afresh; nothing about a row's integrity is decided here —
//! the row MAC is checked before, the digest against the row's
//! `bundle_sha256` after, on every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use soma_capsule::Bundle;

use crate::error::RepoError;
use crate::submissions::parse_bundle;

/// Most parsed bundles kept; past it, the cache starts over.
const CAPACITY: usize = 256;

/// Parsed bundles by the SHA-256 of their bytes.
#[derive(Clone, Debug, Default)]
pub(crate) struct ParsedBundles(Arc<Mutex<HashMap<[u8; 32], Arc<Bundle>>>>);

impl ParsedBundles {
    /// The bundle `bytes` hold and their digest: the kept parse when these
    /// exact bytes were parsed before, else a fresh parse (kept when it
    /// succeeds).
    pub(crate) fn parse(&self, bytes: &[u8]) -> Result<(Arc<Bundle>, [u8; 32]), RepoError> {
        let digest = soma_sign::sha256(bytes);
        if let Some(bundle) = self.lock().get(&digest) {
            return Ok((Arc::clone(bundle), digest));
        }
        let bundle = Arc::new(parse_bundle(bytes)?);
        let mut kept = self.lock();
        if kept.len() >= CAPACITY {
            kept.clear();
        }
        kept.insert(digest, Arc::clone(&bundle));
        Ok((bundle, digest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Bundle>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &[u8] = include_bytes!("../../../crates/capsule/bundles/text-stats.capsule.json");

    #[test]
    fn a_kept_parse_is_the_parse_of_the_same_bytes_and_other_bytes_are_parsed_afresh() {
        let bundles = ParsedBundles::default();
        let bytes = BUNDLE.trim_ascii_end();
        let (first, digest) = bundles.parse(bytes).unwrap();
        assert_eq!(digest, first.digest());
        assert_eq!(*first, parse_bundle(bytes).unwrap());
        let (again, _) = bundles.parse(bytes).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same bytes reuse the kept parse");

        // One byte changed (a description letter): another digest, a fresh
        // parse, which sees the change.
        let mut edited = bytes.to_vec();
        let at = edited
            .windows(b"\"description\":\"".len())
            .position(|w| w == b"\"description\":\"")
            .unwrap()
            + b"\"description\":\"".len();
        edited[at] = if edited[at] == b'X' { b'Y' } else { b'X' };
        let (other, other_digest) = bundles.parse(&edited).unwrap();
        assert_ne!(other_digest, digest);
        assert_eq!(other.digest(), other_digest);
        assert_ne!(other.description(), first.description());

        // Bytes that do not parse are refused every time, never kept.
        let broken = &bytes[..bytes.len() - 1];
        assert!(bundles.parse(broken).is_err());
        assert!(bundles.parse(broken).is_err());
    }
}
