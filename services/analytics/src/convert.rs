//! Conversions every module needs once: the clock, integer ranges of the
//! database, hex, and times as RFC 3339 and as protobuf values.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::AnalyticsError;

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Now, as Unix nanoseconds (`i64::MAX` past year 2262).
pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(i64::MAX)
}

/// A tree size or index as the database's i64.
pub(crate) fn to_i64(v: u64) -> Result<i64, AnalyticsError> {
    i64::try_from(v).map_err(|_| AnalyticsError::InvalidArgument {
        field: "tree_size",
        reason: format!("{v} is out of range"),
    })
}

/// A stored size or index; a negative one means the row was not written
/// by this service.
pub(crate) fn to_u64(v: i64) -> Result<u64, AnalyticsError> {
    u64::try_from(v).map_err(|_| AnalyticsError::LedgerCorrupt {
        first_bad_index: 0,
        reason: format!("negative value {v} stored"),
    })
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Nanoseconds as a protobuf duration (negative spans keep nanos in 0..1e9).
pub(crate) fn duration_proto(nanos: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: nanos.div_euclid(NANOS_PER_SECOND),
        // The remainder is in 0..1e9, so it fits an i32.
        nanos: i32::try_from(nanos.rem_euclid(NANOS_PER_SECOND)).unwrap_or(0),
    }
}

/// Unix nanoseconds as a protobuf timestamp.
pub(crate) fn timestamp_proto(nanos: i64) -> prost_types::Timestamp {
    let d = duration_proto(nanos);
    prost_types::Timestamp {
        seconds: d.seconds,
        nanos: d.nanos,
    }
}

/// Appends [`rfc3339_nanos`] of `nanos` (its characters need no escape).
pub(crate) fn push_rfc3339_nanos(out: &mut Vec<u8>, nanos: i64) {
    let secs = nanos.div_euclid(NANOS_PER_SECOND);
    let frac = nanos.rem_euclid(NANOS_PER_SECOND);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, of_day / 3600, 2);
    out.push(b':');
    push_digits(out, (of_day % 3600) / 60, 2);
    out.push(b':');
    push_digits(out, of_day % 60, 2);
    out.push(b'.');
    push_digits(out, frac, 9);
    out.push(b'Z');
}

/// Appends the last `width` decimal digits of a non-negative `value`,
/// zero-padded (every RFC 3339 field fits its width: years 1677..2262).
fn push_digits(out: &mut Vec<u8>, value: i64, width: usize) {
    let mut buf = [b'0'; 9];
    let mut rest = value.unsigned_abs();
    for slot in buf[..width].iter_mut().rev() {
        // `rest % 10` is a single digit: the cast cannot truncate.
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// Unix nanoseconds as RFC 3339 UTC with nine fractional digits, e.g.
/// `2024-02-29T23:59:59.000000001Z` (proleptic Gregorian calendar; the
/// i64 range spans years 1677..2262, all four-digit).
pub(crate) fn rfc3339_nanos(nanos: i64) -> String {
    let mut out = Vec::with_capacity(30);
    push_rfc3339_nanos(&mut out, nanos);
    // Digits and ASCII punctuation only.
    String::from_utf8_lossy(&out).into_owned()
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{hex, push_rfc3339_nanos, rfc3339_nanos};

    #[test]
    fn rfc3339_formats_exactly() {
        struct Case {
            name: &'static str,
            input: i64,
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "epoch",
                input: 0,
                expected: "1970-01-01T00:00:00.000000000Z",
            },
            Case {
                name: "one before epoch",
                input: -1,
                expected: "1969-12-31T23:59:59.999999999Z",
            },
            Case {
                name: "leap day",
                input: 1_709_251_199_000_000_001,
                expected: "2024-02-29T23:59:59.000000001Z",
            },
            Case {
                name: "year 2000 day 60",
                input: 951_782_400_000_000_000,
                expected: "2000-02-29T00:00:00.000000000Z",
            },
            Case {
                name: "i64 max",
                input: i64::MAX,
                expected: "2262-04-11T23:47:16.854775807Z",
            },
            Case {
                name: "i64 min",
                input: i64::MIN,
                expected: "1677-09-21T00:12:43.145224192Z",
            },
        ];
        for c in cases {
            assert_eq!(rfc3339_nanos(c.input), c.expected, "{}", c.name);
            let mut pushed = Vec::new();
            push_rfc3339_nanos(&mut pushed, c.input);
            assert_eq!(
                String::from_utf8(pushed).unwrap(),
                c.expected,
                "{} (pushed)",
                c.name
            );
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
