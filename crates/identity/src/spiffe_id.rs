//! SPIFFE IDs and trust domains, parsed exactly as the SPIFFE-ID
//! specification (standards/SPIFFE-ID.md) demands.
//!
//! A SPIFFE ID is `spiffe://<trust-domain><path>` where the trust domain is
//! made of lowercase letters, digits, `.`, `-` and `_`, and the path is zero or
//! more `/segment`s of letters, digits, `.`, `-` and `_`, none empty, none
//! `.` or `..`. No query, fragment, userinfo, port or percent-encoding, and at
//! most 2048 bytes in all. Parsing never normalises: an ID that is not already
//! in canonical form is refused, with the reason it is refused.

use std::fmt;
use std::str::FromStr;

/// The URI scheme of every SPIFFE ID, followed by the authority marker.
const SCHEME_PREFIX: &str = "spiffe://";

/// Longest SPIFFE ID the specification allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Longest trust domain name the specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID (or not a trust domain name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("spiffe id is empty")]
    Empty,
    /// The input is longer than 2048 bytes.
    #[error("spiffe id is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The scheme is not exactly `spiffe` (lowercase) followed by `://`.
    #[error("scheme is missing or is not \"spiffe\"")]
    WrongScheme,
    /// The scheme is `spiffe` in another casing.
    #[error("scheme must be lowercase \"spiffe\"")]
    UppercaseScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain has upper-case letters.
    #[error("trust domain must be lowercase")]
    UppercaseTrustDomain,
    /// The trust domain has a character outside `[a-z0-9._-]`.
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    )]
    BadTrustDomainChar,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The authority carries userinfo (`user@`).
    #[error("userinfo is not allowed")]
    Userinfo,
    /// The authority carries a port (`:port`).
    #[error("port is not allowed")]
    Port,
    /// The ID carries a query (`?`).
    #[error("query is not allowed")]
    Query,
    /// The ID carries a fragment (`#`).
    #[error("fragment is not allowed")]
    Fragment,
    /// The ID carries percent-encoding (`%`).
    #[error("percent-encoding is not allowed")]
    PercentEncoded,
    /// A path segment is empty (`//`).
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A path segment has a character outside `[a-zA-Z0-9._-]`.
    #[error("path segment characters are limited to letters, numbers, dots, dashes, and underscores")]
    BadPathSegmentChar,
    /// A path given on its own does not start with `/`.
    #[error("path must start with a slash")]
    NoLeadingSlash,
}

/// A trust domain name, e.g. `somastack.local`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name, or the trust domain of a
    /// `spiffe://name` ID with an empty path.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if strip_scheme(input)?.is_some() {
            let id = SpiffeId::parse(input)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::BadTrustDomainChar);
            }
            return Ok(id.trust_domain);
        }
        check_trust_domain(input)?;
        Ok(Self(input.to_owned()))
    }

    /// The bare name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://name`: the key of its
    /// bundle in the Workload API.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A SPIFFE ID in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg(/seg)*`.
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID; see the module documentation for the rules.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = strip_scheme(input)?.ok_or(SpiffeIdError::WrongScheme)?;
        // Query, fragment and percent-encoding are refused wherever they are,
        // before the authority and path are split, so that each gets its own
        // reason rather than a generic bad-character one.
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoded);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(SpiffeIdError::Userinfo);
        }
        if authority.contains(':') {
            return Err(SpiffeIdError::Port);
        }
        check_trust_domain(authority)?;
        check_path(path)?;
        Ok(Self {
            trust_domain: TrustDomain(authority.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and a path (`""` or `/seg(/seg)*`).
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(SpiffeIdError::NoLeadingSlash);
        }
        Self::parse(&format!("{SCHEME_PREFIX}{}{path}", trust_domain.name()))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain.0, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Returns what follows `spiffe://`, `None` when the input has no `://` at
/// all, and an error when the scheme is present but wrong.
fn strip_scheme(input: &str) -> Result<Option<&str>, SpiffeIdError> {
    let Some(at) = input.find("://") else {
        return if input.contains(':') {
            Err(SpiffeIdError::WrongScheme)
        } else {
            Ok(None)
        };
    };
    let (scheme, rest) = (&input[..at], &input[at + 3..]);
    if scheme == "spiffe" {
        Ok(Some(rest))
    } else if scheme.eq_ignore_ascii_case("spiffe") {
        Err(SpiffeIdError::UppercaseScheme)
    } else {
        Err(SpiffeIdError::WrongScheme)
    }
}

fn check_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    for b in name.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b'A'..=b'Z' => return Err(SpiffeIdError::UppercaseTrustDomain),
            b'@' => return Err(SpiffeIdError::Userinfo),
            b':' => return Err(SpiffeIdError::Port),
            _ => return Err(SpiffeIdError::BadTrustDomainChar),
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(segments) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::NoLeadingSlash);
    };
    // Segments are checked left to right, so that the reason given is the one
    // for the first offending segment (as go-spiffe reports it): `/a/./` is a
    // dot segment, `/a/` a trailing slash, `//a` an empty segment.
    let count = segments.split('/').count();
    for (index, segment) in segments.split('/').enumerate() {
        match segment {
            "" if index + 1 == count => return Err(SpiffeIdError::TrailingSlash),
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(SpiffeIdError::BadPathSegmentChar);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_offending_segment_decides_the_reason() {
        let cases = [
            ("spiffe://td/a/./", SpiffeIdError::DotSegment),
            ("spiffe://td/a/", SpiffeIdError::TrailingSlash),
            ("spiffe://td/", SpiffeIdError::TrailingSlash),
            ("spiffe://td//", SpiffeIdError::EmptySegment),
            ("spiffe://td//a", SpiffeIdError::EmptySegment),
            ("spiffe://td/a//", SpiffeIdError::EmptySegment),
            ("spiffe://td/a b/./", SpiffeIdError::BadPathSegmentChar),
        ];
        for (input, expected) in cases {
            assert_eq!(SpiffeId::parse(input), Err(expected), "{input}");
        }
    }

    #[test]
    fn trust_domain_accepts_bare_name_and_root_id() {
        assert_eq!(TrustDomain::parse("example.org").unwrap().name(), "example.org");
        assert_eq!(
            TrustDomain::parse("spiffe://example.org").unwrap().name(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::parse("example.org").unwrap().id_string(),
            "spiffe://example.org"
        );
        assert_eq!(
            TrustDomain::parse("Example.org"),
            Err(SpiffeIdError::UppercaseTrustDomain)
        );
        assert_eq!(TrustDomain::parse(""), Err(SpiffeIdError::MissingTrustDomain));
    }
}
