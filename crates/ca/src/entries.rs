//! Registration entries: which local processes get which SPIFFE ID, by unix
//! selectors like those of SPIRE's unix workload attestor.
//!
//! Entries live in `DIR/ca/entries.json` beside the root, so a running
//! authority (`soma up`) and the `soma ca entry` commands share them: the
//! Workload API reads the file at every attestation, so an entry takes
//! effect, or stops taking effect, for the next request and the next
//! rotation. Writers hold an exclusive lock on `DIR/ca/entries.lock` around
//! read-modify-write and replace the file atomically; readers never see half
//! a file. Parsing is strict: unknown fields, unknown selector types, a
//! malformed value, an entry without selectors, a SPIFFE ID outside the
//! authority's trust domain or a duplicate entry id make the whole file
//! invalid, and then nobody is attested by entries (fail closed).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};
use soma_identity::{SpiffeId, TrustDomain};

use crate::error::CaError;
use crate::files::{self, PUBLIC_FILE};

/// Version written in, and required of, the entries file.
const FORMAT_VERSION: u32 = 1;

/// One unix selector (`unix:<type>:<value>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Selector {
    /// `unix:uid:<n>`: the caller's user id (`SO_PEERCRED`).
    Uid(u32),
    /// `unix:gid:<n>`: the caller's primary group id (`SO_PEERCRED`).
    Gid(u32),
    /// `unix:path:<abs>`: the binary the caller runs (`/proc/<pid>/exe`).
    Path(PathBuf),
    /// `unix:sha256:<64 hex>`: the SHA-256 of that binary, lowercase hex.
    Sha256(String),
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix("unix:") else {
            return Err(format!(
                "selector {s:?}: only unix selectors (unix:TYPE:VALUE) exist here"
            ));
        };
        let Some((kind, value)) = rest.split_once(':') else {
            return Err(format!("selector {s:?}: expected unix:TYPE:VALUE"));
        };
        let id = |v: &str| -> Result<u32, String> {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || (v.len() > 1 && v.starts_with('0')) {
                return Err(format!("selector {s:?}: {kind} must be a decimal number"));
            }
            v.parse()
                .map_err(|_| format!("selector {s:?}: {kind} out of range"))
        };
        match kind {
            "uid" => id(value).map(Self::Uid),
            "gid" => id(value).map(Self::Gid),
            "path" => {
                let path = Path::new(value);
                if !path.is_absolute()
                    || path
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir))
                    || value.ends_with('/')
                {
                    return Err(format!("selector {s:?}: path must be absolute and normalised"));
                }
                Ok(Self::Path(path.to_owned()))
            }
            "sha256" => {
                if value.len() != 64
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(format!("selector {s:?}: sha256 must be 64 lowercase hex digits"));
                }
                Ok(Self::Sha256(value.to_owned()))
            }
            other => Err(format!(
                "selector {s:?}: unknown type {other:?} (uid, gid, path or sha256)"
            )),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "unix:uid:{uid}"),
            Self::Gid(gid) => write!(f, "unix:gid:{gid}"),
            Self::Path(path) => write!(f, "unix:path:{}", path.display()),
            Self::Sha256(hex) => write!(f, "unix:sha256:{hex}"),
        }
    }
}

/// A registration entry: a process whose attributes include every selector
/// gets the SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Random identifier (32 lowercase hex digits), for `entry delete`.
    pub entry_id: String,
    /// The identity granted.
    pub spiffe_id: SpiffeId,
    /// All must match (at least one).
    pub selectors: Vec<Selector>,
}

/// The entries file under a data dir.
#[derive(Clone, Debug)]
pub struct EntryStore {
    path: PathBuf,
    lock: PathBuf,
    trust_domain: TrustDomain,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    entries: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    id: String,
    spiffe_id: String,
    selectors: Vec<String>,
}

impl EntryStore {
    /// The entries of the authority under `data_dir` (`DIR/ca/entries.json`),
    /// whose SPIFFE IDs must be in `trust_domain`.
    pub fn for_data_dir(data_dir: &Path, trust_domain: &TrustDomain) -> Self {
        let ca = data_dir.join("ca");
        Self {
            path: ca.join("entries.json"),
            lock: ca.join("entries.lock"),
            trust_domain: trust_domain.clone(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, in creation order. A missing file is no entries.
    pub fn list(&self) -> Result<Vec<Entry>, CaError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CaError::io("cannot read", &self.path)(e)),
        };
        self.parse(&bytes)
    }

    /// Adds an entry for `spiffe_id` with `selectors`; returns it.
    pub fn create(&self, spiffe_id: SpiffeId, selectors: Vec<Selector>) -> Result<Entry, CaError> {
        self.check(&spiffe_id, &selectors)?;
        let mut raw = [0u8; 16];
        SystemRandom::new().fill(&mut raw).map_err(|_| CaError::Random)?;
        let entry = Entry {
            entry_id: crate::authority::hex(&raw),
            spiffe_id,
            selectors,
        };
        self.update(|entries| {
            entries.push(entry.clone());
            true
        })?;
        Ok(entry)
    }

    /// Removes the entry `entry_id`; false if there was none.
    pub fn delete(&self, entry_id: &str) -> Result<bool, CaError> {
        self.update(|entries| {
            let before = entries.len();
            entries.retain(|e| e.entry_id != entry_id);
            entries.len() != before
        })
    }

    /// Read-modify-write under the lock; writes only if `change` says so.
    fn update(&self, change: impl FnOnce(&mut Vec<Entry>) -> bool) -> Result<bool, CaError> {
        if let Some(parent) = self.path.parent() {
            files::create_dir(parent, 0o700)?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(CaError::io("cannot open", &self.lock))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| CaError::io("cannot lock", &self.lock)(e.into()))?;
        let mut entries = self.list()?;
        let changed = change(&mut entries);
        if changed {
            let file = FileFormat {
                version: FORMAT_VERSION,
                entries: entries
                    .iter()
                    .map(|e| FileEntry {
                        id: e.entry_id.clone(),
                        spiffe_id: e.spiffe_id.to_string(),
                        selectors: e.selectors.iter().map(ToString::to_string).collect(),
                    })
                    .collect(),
            };
            let mut json = serde_json::to_vec_pretty(&file).map_err(|e| self.invalid(e.to_string()))?;
            json.push(b'\n');
            files::write_atomic(&self.path, &json, PUBLIC_FILE)?;
        }
        // The lock is released when `lock` is dropped (closed).
        Ok(changed)
    }

    fn parse(&self, bytes: &[u8]) -> Result<Vec<Entry>, CaError> {
        let file: FileFormat = serde_json::from_slice(bytes).map_err(|e| self.invalid(e.to_string()))?;
        if file.version != FORMAT_VERSION {
            return Err(self.invalid(format!("version {}, expected {FORMAT_VERSION}", file.version)));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(file.entries.len());
        for raw in file.entries {
            if raw.id.len() != 32
                || !raw
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(self.invalid(format!("entry id {:?} is not 32 lowercase hex digits", raw.id)));
            }
            if entries.iter().any(|e| e.entry_id == raw.id) {
                return Err(self.invalid(format!("entry id {} appears twice", raw.id)));
            }
            let spiffe_id = SpiffeId::parse(&raw.spiffe_id)
                .map_err(|e| self.invalid(format!("entry {}: {e}", raw.id)))?;
            let selectors = raw
                .selectors
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<Selector>, String>>()
                .map_err(|e| self.invalid(format!("entry {}: {e}", raw.id)))?;
            self.check(&spiffe_id, &selectors)?;
            entries.push(Entry {
                entry_id: raw.id,
                spiffe_id,
                selectors,
            });
        }
        Ok(entries)
    }

    fn check(&self, spiffe_id: &SpiffeId, selectors: &[Selector]) -> Result<(), CaError> {
        if spiffe_id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignIdentity {
                id: spiffe_id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if spiffe_id.path().is_empty() {
            return Err(CaError::TrustDomainIdentity {
                id: spiffe_id.clone(),
            });
        }
        if selectors.is_empty() {
            return Err(self.invalid(format!("entry for {spiffe_id} has no selector")));
        }
        Ok(())
    }

    fn invalid(&self, reason: String) -> CaError {
        CaError::InvalidEntries {
            path: self.path.clone(),
            reason,
        }
    }
}

/// What the kernel says about a caller, gathered lazily: the binary's path
/// and digest are read only if some entry asks for them.
pub(crate) struct Caller {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    path: Option<Option<PathBuf>>,
    sha256: Option<Option<String>>,
}

impl Caller {
    pub(crate) fn new(pid: u32, uid: u32, gid: u32) -> Self {
        Self {
            pid,
            uid,
            gid,
            path: None,
            sha256: None,
        }
    }

    /// The first entry (in creation order) all of whose selectors the
    /// caller has.
    pub(crate) fn first_match<'e>(&mut self, entries: &'e [Entry]) -> Option<&'e Entry> {
        entries
            .iter()
            .find(|entry| entry.selectors.iter().all(|s| self.has(s)))
    }

    fn has(&mut self, selector: &Selector) -> bool {
        let pid = self.pid;
        match selector {
            Selector::Uid(uid) => *uid == self.uid,
            Selector::Gid(gid) => *gid == self.gid,
            Selector::Path(path) => self
                .path
                .get_or_insert_with(|| crate::process::exe_path(pid).ok())
                .as_ref()
                .is_some_and(|p| p == path),
            Selector::Sha256(hex) => self
                .sha256
                .get_or_insert_with(|| crate::process::exe_sha256(pid).ok())
                .as_ref()
                .is_some_and(|h| h == hex),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_strictly() {
        struct Case {
            input: &'static str,
            expected: Result<Selector, &'static str>,
        }
        let sha = "ab".repeat(32);
        let cases = [
            Case {
                input: "unix:uid:1000",
                expected: Ok(Selector::Uid(1000)),
            },
            Case {
                input: "unix:gid:0",
                expected: Ok(Selector::Gid(0)),
            },
            Case {
                input: "unix:path:/usr/bin/python3",
                expected: Ok(Selector::Path("/usr/bin/python3".into())),
            },
            Case {
                input: "unix:uid:",
                expected: Err("selector \"unix:uid:\": uid must be a decimal number"),
            },
            Case {
                input: "unix:uid:-1",
                expected: Err("selector \"unix:uid:-1\": uid must be a decimal number"),
            },
            Case {
                input: "unix:uid:01",
                expected: Err("selector \"unix:uid:01\": uid must be a decimal number"),
            },
            Case {
                input: "unix:uid:4294967296",
                expected: Err("selector \"unix:uid:4294967296\": uid out of range"),
            },
            Case {
                input: "unix:path:bin/x",
                expected: Err("selector \"unix:path:bin/x\": path must be absolute and normalised"),
            },
            Case {
                input: "unix:path:/a/../b",
                expected: Err("selector \"unix:path:/a/../b\": path must be absolute and normalised"),
            },
            Case {
                input: "unix:sha256:AB",
                expected: Err("selector \"unix:sha256:AB\": sha256 must be 64 lowercase hex digits"),
            },
            Case {
                input: "unix:user:root",
                expected: Err(
                    "selector \"unix:user:root\": unknown type \"user\" (uid, gid, path or sha256)",
                ),
            },
            Case {
                input: "k8s:ns:default",
                expected: Err(
                    "selector \"k8s:ns:default\": only unix selectors (unix:TYPE:VALUE) exist here",
                ),
            },
            Case {
                input: "unix:uid",
                expected: Err("selector \"unix:uid\": expected unix:TYPE:VALUE"),
            },
        ];
        for case in cases {
            assert_eq!(
                case.input.parse::<Selector>(),
                case.expected.map_err(str::to_owned),
                "{}",
                case.input
            );
        }
        let parsed: Selector = format!("unix:sha256:{sha}").parse().unwrap();
        assert_eq!(parsed.to_string(), format!("unix:sha256:{sha}"));
    }
}
