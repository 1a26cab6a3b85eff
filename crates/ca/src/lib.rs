//! The development SPIFFE authority of SomaStack.
//!
//! `soma-ca` keeps a P-256 root under a directory, signs X509-SVIDs with it,
//! and serves the SPIFFE Workload API on a Unix socket, so that services on a
//! laptop obtain their identities through exactly the code path they use with
//! a SPIRE agent.
//!
//! It issues X509-SVIDs and ES256 JWT-SVIDs (with their JWKS bundle and
//! ValidateJWTSVID), attests callers by a supervisor's pid registrations
//! (bound to the process, not the number) and by registration entries with
//! unix selectors (uid, gid, binary path, binary SHA-256), and accepts every
//! `:authority` a conforming gRPC client sends over a Unix socket.
//!
//! Its root and JWT key rotate together on SPIRE's schedule (a prepared
//! slot published at half the root's lifetime, activated at five sixths,
//! the old one published until it expires), and every bundle change reaches
//! the open Workload API streams.
//!
//! It deliberately does not implement federation, intermediate CAs, CRLs or
//! tainting, or node attestation: it is a development authority, not a
//! replacement for SPIRE.
//!
//! Its security-relevant default: nobody gets an identity. A caller receives
//! an SVID only if its process is registered in the [`Registry`] or matches a
//! registration entry ([`EntryStore`]); every request must also carry the
//! `workload.spiffe.io: true` header.

mod authority;
mod entries;
mod error;
mod files;
mod hpack;
mod jwt;
mod keys;
mod normalise;
mod pem;
mod process;
mod registry;
mod socket;
mod workload;

pub use authority::{Authority, AuthorityOptions, IssueOptions, IssuedSvid, SlotInfo, SlotState};
pub use entries::{Entry, EntryStore, Selector};
pub use error::CaError;
pub use jwt::{IssuedJwt, ValidatedJwt};
pub use registry::Registry;
pub use socket::bind_socket;
pub use workload::{WorkloadApi, WorkloadApiConfig};
