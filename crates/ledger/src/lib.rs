//! SomaStack ledger core: RFC 9162 (Certificate Transparency v2) Merkle tree
//! math and signed checkpoints, without storage.
//!
//! What it does: leaf and node hashing (SHA-256 with the RFC's 0x00 / 0x01
//! domain separation), tree roots ([`root`], and the incremental
//! [`CompactTree`]), inclusion and consistency proof generation from the list
//! of leaf hashes (O(n) per proof) or from the in-memory [`MerkleTree`] index
//! of perfect subtrees (O(log n) per proof, at any earlier tree size), their
//! offline verification, and tree heads as C2SP checkpoints signed with
//! Ed25519 in the signed-note format.
//!
//! What it deliberately does not do: persist anything or decide what a leaf
//! contains. The Analytics service persists leaves and checkpoints on top of
//! these types.
//!
//! Security-relevant defaults: verifiers take hostile sizes, indexes and
//! proofs without panicking and demand the exact proof length; a consistency
//! proof from the empty tree is refused; a checkpoint note is verified before
//! its body is read, its body is parsed strictly (canonical decimal, canonical
//! base64, 32-byte root), and it must carry the expected origin.

mod checkpoint;
mod compact;
mod error;
mod hash;
mod merkle_tree;
mod tree;
mod verify;

pub use checkpoint::{
    Checkpoint, CheckpointSigner, CheckpointVerifier, MAX_NOTE_LEN, MAX_SIGNATURES, check_monotonic,
};
pub use compact::CompactTree;
pub use error::LedgerError;
pub use hash::{EMPTY_ROOT, Hash, leaf_hash, node_hash};
pub use merkle_tree::MerkleTree;
pub use tree::{consistency_proof, inclusion_proof, root};
pub use verify::{verify_consistency, verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes};
