//! What a SomaStack tool release is, and how it is verified.
//!
//! What it does: defines the release manifest ([`Manifest`]: tool, SemVer
//! [`Version`], module digest and size, entrypoint, sandbox [`Limits`],
//! description) and its one byte string, the RFC 8785 canonical form; the
//! publisher's signature, a DSSE envelope of type [`PAYLOAD_TYPE`] signed
//! with Ed25519 under a key id derived from the key ([`publisher_key_id`],
//! [`sign_manifest`], [`verify_publication`]); the registry's own seal, an
//! HMAC-SHA256 over the manifest digest ([`seal`]); and the verification of
//! a stored release that `VerifyRelease` and the pre-execution check run
//! ([`verify`]), which recomputes everything and names every failure.
//!
//! What it deliberately does not do: any I/O. It neither stores releases,
//! keys nor modules (the ToolRegistry service does) nor compiles or runs
//! modules (the sandbox does); it is pure functions over bytes, so the
//! service, the CLI and offline verifiers share one definition.
//!
//! Security-relevant defaults: a manifest payload is accepted only if it is
//! byte for byte its canonical form (the signed, digested and stored bytes
//! are one byte string), parsed as strict I-JSON with integers limited to
//! 0..=2^53−1 and unknown members refused; a publication needs exactly one
//! signature, verified strictly over the DSSE PAE before the payload is
//! parsed; publisher key ids are recomputed from the key at every check;
//! HMAC tags are compared in constant time and retired keys never verify.

mod error;
mod manifest;
mod publisher;
mod seal;
mod verify;
mod version;

pub use error::ReleaseError;
pub use manifest::{
    Limits, MAX_DESCRIPTION_LEN, MAX_NAME_LEN, MAX_SAFE_INTEGER, Manifest, PAYLOAD_TYPE, WASM_PAGE_SIZE,
};
pub use publisher::{PublisherKey, publisher_key_id, sign_manifest, sign_manifest_with, verify_publication};
pub use seal::seal;
pub use verify::{Failure, Stored, verify};
pub use version::{MAX_VERSION_LEN, Version};
