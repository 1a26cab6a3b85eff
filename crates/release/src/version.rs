//! SemVer 2.0.0 versions (semver.org), ordered by precedence.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::error::ReleaseError;

/// Longest version text accepted, in bytes. SemVer sets no limit; this one
/// keeps a version a short column and a short log line.
pub const MAX_VERSION_LEN: usize = 128;

/// A SemVer 2.0.0 version.
///
/// Equality, ordering and hashing are SemVer *precedence* (§11): build
/// metadata is ignored, so `1.0.0+a == 1.0.0+b` and neither is greater than
/// the other (the registry refuses the second as "not greater"). `Display`
/// and [`Version::as_str`] give the original text, build metadata included.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Identifier>,
}

/// One dot-separated pre-release identifier.
///
/// The variant order is the precedence order: numeric identifiers always
/// have lower precedence than alphanumeric ones (§11.4.3).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Identifier {
    /// Digits only, compared numerically.
    Numeric(u64),
    /// Letters, digits and hyphens (not digits only), compared in ASCII order.
    AlphaNumeric(String),
}

impl Version {
    /// Parses SemVer 2.0.0 text: `MAJOR.MINOR.PATCH`, then optionally
    /// `-PRE.RELEASE` and `+BUILD.METADATA`.
    ///
    /// Refused: leading zeros in numeric identifiers (`01.0.0`, `1.0.0-01`),
    /// fewer or more than three core numbers, empty identifiers (`1.0.0-`,
    /// `1.0.0+`, `1.0.0-a..b`), characters outside `[0-9A-Za-z-]`, numbers
    /// beyond `u64::MAX`, and text longer than [`MAX_VERSION_LEN`].
    pub fn parse(text: &str) -> Result<Self, ReleaseError> {
        let invalid = |reason| ReleaseError::VersionInvalid { reason };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if text.len() > MAX_VERSION_LEN {
            return Err(invalid("longer than 128 bytes"));
        }
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        if let Some(build) = build {
            // Build identifiers may have leading zeros (§10); they must not be empty.
            for id in build.split('.') {
                check_identifier_chars(id)?;
            }
        }
        let (core, pre_text) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let mut numbers = core.split('.');
        let (Some(major), Some(minor), Some(patch), None) =
            (numbers.next(), numbers.next(), numbers.next(), numbers.next())
        else {
            return Err(invalid("the core must be exactly MAJOR.MINOR.PATCH"));
        };
        let major = numeric(major)?;
        let minor = numeric(minor)?;
        let patch = numeric(patch)?;
        let mut pre = Vec::new();
        if let Some(pre_text) = pre_text {
            for id in pre_text.split('.') {
                check_identifier_chars(id)?;
                pre.push(if id.bytes().all(|b| b.is_ascii_digit()) {
                    Identifier::Numeric(numeric(id)?)
                } else {
                    Identifier::AlphaNumeric(id.to_owned())
                });
            }
        }
        Ok(Self {
            text: text.to_owned(),
            major,
            minor,
            patch,
            pre,
        })
    }

    /// The version exactly as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// MAJOR.
    pub fn major(&self) -> u64 {
        self.major
    }

    /// MINOR.
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// PATCH.
    pub fn patch(&self) -> u64 {
        self.patch
    }

    /// Whether the version carries a pre-release part (`1.0.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    /// SemVer precedence (§11): core numbers numerically; a pre-release is
    /// lower than the same core without one; pre-release identifiers compared
    /// left to right, a shorter list lower when all before are equal; build
    /// metadata ignored.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl Hash for Version {
    // Consistent with `Eq`: what precedence ignores, the hash ignores.
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.major, self.minor, self.patch, &self.pre).hash(state);
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Version {
    type Err = ReleaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An identifier is non-empty and uses only `[0-9A-Za-z-]` (§9, §10).
fn check_identifier_chars(id: &str) -> Result<(), ReleaseError> {
    if id.is_empty() {
        return Err(ReleaseError::VersionInvalid {
            reason: "an identifier is empty",
        });
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ReleaseError::VersionInvalid {
            reason: "an identifier has a character outside [0-9A-Za-z-]",
        });
    }
    Ok(())
}

/// A numeric identifier: digits, no leading zero, at most `u64::MAX`.
fn numeric(digits: &str) -> Result<u64, ReleaseError> {
    let invalid = |reason| ReleaseError::VersionInvalid { reason };
    if digits.is_empty() {
        return Err(invalid("a number is empty"));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("a core number has a character other than a digit"));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(invalid("a number has a leading zero"));
    }
    digits
        .parse()
        .map_err(|_| invalid("a number is larger than 18446744073709551615"))
}
