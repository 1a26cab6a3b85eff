//! The development SPIFFE authority of SomaStack.
//!
//! `soma-ca` keeps a P-256 root under a directory, signs X509-SVIDs with it,
//! and serves the SPIFFE Workload API on a Unix socket, so that services on a
//! laptop obtain their identities through exactly the code path they use with
//! a SPIRE agent.
//!
//! It deliberately does not implement JWT-SVIDs (those RPCs answer
//! `UNIMPLEMENTED`), federation, intermediate CAs, root rotation or node
//! attestation: it is a development authority, not a replacement for SPIRE.
//!
//! Its security-relevant default: nobody gets an identity. A caller receives
//! an SVID only if its process id, as the kernel reports it for the socket
//! connection, has been registered for a SPIFFE ID in the [`Registry`]; every
//! request must also carry the `workload.spiffe.io: true` header.

mod authority;
mod entries;
mod error;
mod files;
mod hpack;
mod normalise;
mod pem;
mod process;
mod registry;
mod socket;
mod workload;

pub use authority::{Authority, IssueOptions, IssuedSvid};
pub use entries::{Entry, EntryStore, Selector};
pub use error::CaError;
pub use registry::Registry;
pub use socket::bind_socket;
pub use workload::{WorkloadApi, WorkloadApiConfig};
