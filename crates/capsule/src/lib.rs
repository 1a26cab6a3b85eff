//! What a SomaStack capsule is, and how its attestations are made and verified.
//!
//! What it does: defines the capsule bundle ([`Bundle`]: name, SemVer
//! version, description, the tool releases it runs pinned by module digest
//! ([`ToolRef`]), an input schema in a supported subset of JSON Schema, and
//! default parameters) and its one byte string, the RFC 8785 canonical form,
//! whose SHA-256 is the bundle digest; checks a run input against the schema
//! naming the field at fault ([`Bundle::check_input`]); reads the in-toto
//! Statement v1 an attestation carries ([`Statement`]); verifies a DSSE
//! attestation over the bundle digest with t-of-n registered Ed25519
//! publisher keys ([`verify_attestation`]); and makes one ([`attest`]).
//!
//! What it deliberately does not do: any I/O. It stores neither bundles,
//! keys nor submissions (CapsuleRepo does), reads no files (the `soma` CLI
//! does) and runs no tools (the ToolRegistry does); it is pure functions
//! over bytes, so the service, the CLI and offline verifiers share one
//! definition.
//!
//! Security-relevant defaults: a bundle is accepted only if it is byte for
//! byte its canonical form, parsed as strict I-JSON with unknown members and
//! unsupported schema constructs refused; an attestation is verified over
//! the DSSE PAE of the payload bytes exactly as sent, signatures before the
//! statement is parsed, each registered key counted once however often it
//! signs, retired keys and key ids not derived from their key never
//! counting, and a threshold of zero refused.

mod attest;
mod bundle;
mod error;
mod schema;
mod statement;

pub use attest::{
    AttestationKey, CAPSULE_REVIEW_PREDICATE_TYPE, DEFAULT_ALLOWED_PREDICATE_TYPES,
    SLSA_PROVENANCE_PREDICATE_TYPE, attest, envelope_from_json, verify_attestation,
};
pub use bundle::{Bundle, MAX_DESCRIPTION_LEN, MAX_NAME_LEN, MAX_TOOLS, ToolRef};
pub use error::{AttestError, BundleError, InputError};
pub use statement::{PAYLOAD_TYPE, STATEMENT_TYPE, Statement, Subject};
