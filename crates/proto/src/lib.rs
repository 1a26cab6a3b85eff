//! The SomaStack API: prost/tonic code generated from `proto/` at build time
//! (with protox, no protoc), the encoded descriptor set, and typed access to
//! each method's `somastack.v1.policy` option.
//!
//! This crate does not enforce anything; the mesh runtime and the edge read
//! policies from here. Its security-relevant default: a method whose
//! descriptor carries no policy option has no policy (`None`), which every
//! consumer treats as "deny".

pub mod json;
mod policy;

pub use policy::{MethodPolicy as PolicyView, PolicyError, PolicyTable, descriptor_pool, pattern_matches};

/// `google.api`: the HTTP mapping annotations.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    missing_debug_implementations,
    unused_qualifications
)]
pub mod google {
    /// `google.api`.
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
}

/// `somastack.v1`: the four services and their messages.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    missing_debug_implementations,
    unused_qualifications
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/somastack.v1.rs"));
}

/// The SPIFFE Workload API (a package-less proto).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    missing_debug_implementations,
    unused_qualifications
)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Encoded `FileDescriptorSet` of every proto in `proto/`, imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

/// Fully-qualified names of the four SomaStack services.
pub const SERVICE_NAMES: [&str; 4] = [
    "somastack.v1.Gateway",
    "somastack.v1.ToolRegistry",
    "somastack.v1.CapsuleRepo",
    "somastack.v1.Analytics",
];
