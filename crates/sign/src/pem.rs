//! Minimal strict PEM (RFC 7468) armour for one document.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::SignError;

/// Decodes a PEM document that must carry `label`.
///
/// Strict: exactly one document, surrounding whitespace only, no headers,
/// body lines of canonical padded standard base64.
pub(crate) fn decode(text: &str, label: &'static str) -> Result<Vec<u8>, SignError> {
    let mut lines = text.trim().lines().map(|l| l.trim_end_matches('\r'));
    let first = lines.next().ok_or(SignError::PemMalformed {
        reason: "empty input",
    })?;
    let found = first
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.strip_suffix("-----"))
        .ok_or(SignError::PemMalformed {
            reason: "missing begin line",
        })?;
    if found != label {
        return Err(SignError::PemLabel {
            expected: label,
            found: found.to_owned(),
        });
    }
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if ended {
            return Err(SignError::PemMalformed {
                reason: "data after end line",
            });
        }
        if line == end {
            ended = true;
        } else if line.starts_with("-----") {
            return Err(SignError::PemMalformed {
                reason: "unexpected armour line",
            });
        } else {
            body.push_str(line);
        }
    }
    if !ended {
        return Err(SignError::PemMalformed {
            reason: "missing end line",
        });
    }
    STANDARD
        .decode(body.as_bytes())
        .map_err(|_| SignError::PemMalformed {
            reason: "body is not base64",
        })
}

/// Encodes `der` as a PEM document with `label`, 64 base64 characters per line.
pub(crate) fn encode(der: &[u8], label: &str) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
