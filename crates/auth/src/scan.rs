//! An exact scanner for the two JSON objects of a token (header and
//! payload): it finds the members the verifier reads, as raw JSON text, in
//! one pass without building anything.
//!
//! Why it exists: the serde path (a derived struct of `RawValue` members)
//! spent more time matching field names and driving visitors than the
//! HMAC took to compute. Why it can be trusted: it accepts exactly the
//! texts the serde path accepts and returns exactly the same member texts
//! (RFC 8259 grammar as `serde_json` applies it: the four whitespace bytes,
//! no leading zeros, no control characters in strings, only the nine escapes,
//! `\u` with four hex digits, nothing after the object; a member the caller
//! reads named twice is refused, other members may repeat). Where matching
//! serde exactly would take more code than it saves, the scanner answers
//! [`Scan::Unsure`] and the caller runs the serde path itself: a member
//! name with an escape (serde compares names after unescaping, and refuses
//! a lone surrogate in any name), or nesting deeper than [`MAX_DEPTH`].
//! `jwt.rs` holds the differential test against the serde path.

/// Nesting the scanner tracks itself (a 128-bit stack of container kinds);
/// deeper values are left to serde, which accepts any depth inside an
/// ignored or raw member.
pub(crate) const MAX_DEPTH: u32 = 128;

/// What the scanner concluded about one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A valid object; the members found are in the output slots.
    Valid,
    /// Not a JSON object the serde path would accept.
    Invalid,
    /// Outside what the scanner decides: ask the serde path.
    Unsure,
}

/// Why a value could not be skipped.
enum Stop {
    Invalid,
    Unsure,
}

/// Scans `text` as one JSON object. `slot` maps the name of a member the
/// caller reads to its index in `found` (`None` for every other name);
/// `found[i]` receives that member's raw text (without surrounding
/// whitespace, as `RawValue` holds it). The slots are only meaningful when
/// [`Scan::Valid`] is returned.
pub(crate) fn object<'a, const N: usize>(
    text: &'a str,
    slot: impl Fn(&str) -> Option<usize>,
    found: &mut [Option<&'a str>; N],
) -> Scan {
    match scan_object(text, slot, found) {
        Ok(()) => Scan::Valid,
        Err(Stop::Invalid) => Scan::Invalid,
        Err(Stop::Unsure) => Scan::Unsure,
    }
}

fn scan_object<'a, const N: usize>(
    text: &'a str,
    slot: impl Fn(&str) -> Option<usize>,
    found: &mut [Option<&'a str>; N],
) -> Result<(), Stop> {
    let bytes = text.as_bytes();
    let mut i = whitespace(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return Err(Stop::Invalid);
    }
    i = whitespace(bytes, i + 1);
    if bytes.get(i) == Some(&b'}') {
        return end(bytes, i + 1);
    }
    loop {
        if bytes.get(i) != Some(&b'"') {
            return Err(Stop::Invalid);
        }
        let (after, escaped) = string(bytes, i + 1)?;
        if escaped {
            // serde matches the unescaped name, and validates surrogates in
            // every member name: its own path decides.
            return Err(Stop::Unsure);
        }
        let name = text.get(i + 1..after - 1).ok_or(Stop::Unsure)?;
        i = whitespace(bytes, after);
        if bytes.get(i) != Some(&b':') {
            return Err(Stop::Invalid);
        }
        let start = whitespace(bytes, i + 1);
        let stop = value(bytes, start)?;
        if let Some(at) = slot(name) {
            let entry = found.get_mut(at).ok_or(Stop::Unsure)?;
            if entry.is_some() {
                // A member the verifier reads, named twice.
                return Err(Stop::Invalid);
            }
            *entry = Some(text.get(start..stop).ok_or(Stop::Unsure)?);
        }
        i = whitespace(bytes, stop);
        match bytes.get(i) {
            Some(b',') => i = whitespace(bytes, i + 1),
            Some(b'}') => return end(bytes, i + 1),
            _ => return Err(Stop::Invalid),
        }
    }
}

/// Only whitespace may follow the object.
fn end(bytes: &[u8], i: usize) -> Result<(), Stop> {
    if whitespace(bytes, i) == bytes.len() {
        Ok(())
    } else {
        Err(Stop::Invalid)
    }
}

/// The index of the first byte at or after `i` that is not JSON whitespace
/// (space, tab, line feed, carriage return: not form feed).
pub(crate) fn whitespace(bytes: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(i) {
        i += 1;
    }
    i
}

/// Skips the string whose opening quote precedes `i`; returns the index
/// after its closing quote and whether it holds an escape.
fn string(bytes: &[u8], mut i: usize) -> Result<(usize, bool), Stop> {
    let mut escaped = false;
    loop {
        i = plain(bytes, i);
        match bytes.get(i) {
            None => return Err(Stop::Invalid),
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                match bytes.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') => {
                        let hex = bytes.get(i + 2..i + 6).ok_or(Stop::Invalid)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(Stop::Invalid);
                        }
                        i += 6;
                    }
                    _ => return Err(Stop::Invalid),
                }
            }
            Some(&b) if b < 0x20 => return Err(Stop::Invalid),
            Some(_) => i += 1,
        }
    }
}

/// The index of the first byte at or after `i` that ends a run of plain
/// string content: a quote, a backslash or a control character (or the
/// end). Eight bytes at a time: in each word, a byte that matches sets its
/// high bit, and the lowest set bit marks the first match exactly (a false
/// hit can only sit above a true one, from its borrow).
fn plain(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(word);
        let control = word.wrapping_sub(ONES * 0x20) & !word;
        let quotes = word ^ (ONES * u64::from(b'"'));
        let quote = quotes.wrapping_sub(ONES) & !quotes;
        let backslashes = word ^ (ONES * u64::from(b'\\'));
        let backslash = backslashes.wrapping_sub(ONES) & !backslashes;
        let hits = (control | quote | backslash) & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// Skips `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` from `i`.
fn number(bytes: &[u8], mut i: usize) -> Result<usize, Stop> {
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    match bytes.get(i) {
        Some(b'0') => {
            i += 1;
            if bytes.get(i).is_some_and(u8::is_ascii_digit) {
                return Err(Stop::Invalid);
            }
        }
        Some(b'1'..=b'9') => i = digits(bytes, i + 1),
        _ => return Err(Stop::Invalid),
    }
    if bytes.get(i) == Some(&b'.') {
        let after = digits(bytes, i + 1);
        if after == i + 1 {
            return Err(Stop::Invalid);
        }
        i = after;
    }
    if let Some(b'e' | b'E') = bytes.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = bytes.get(i) {
            i += 1;
        }
        let after = digits(bytes, i);
        if after == i {
            return Err(Stop::Invalid);
        }
        i = after;
    }
    Ok(i)
}

fn digits(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Skips one JSON value starting at `i` (no leading whitespace); returns
/// the index after it. Iterative: nesting costs one bit, never stack.
fn value(bytes: &[u8], mut i: usize) -> Result<usize, Stop> {
    // Bit d set: the container at depth d + 1 is an object.
    let mut objects: u128 = 0;
    let mut depth: u32 = 0;
    loop {
        // A value begins at `i`.
        match bytes.get(i) {
            Some(b'n') => i = literal(bytes, i, b"null")?,
            Some(b't') => i = literal(bytes, i, b"true")?,
            Some(b'f') => i = literal(bytes, i, b"false")?,
            Some(b'-' | b'0'..=b'9') => i = number(bytes, i)?,
            Some(b'"') => i = string(bytes, i + 1)?.0,
            Some(&open @ (b'[' | b'{')) => {
                if depth == MAX_DEPTH {
                    return Err(Stop::Unsure);
                }
                let object = open == b'{';
                if object {
                    objects |= 1 << depth;
                } else {
                    objects &= !(1 << depth);
                }
                depth += 1;
                i = whitespace(bytes, i + 1);
                let close = if object { b'}' } else { b']' };
                if bytes.get(i) == Some(&close) {
                    // Empty: the container is a complete value.
                    depth -= 1;
                    i += 1;
                } else {
                    if object {
                        i = member_name(bytes, i)?;
                    }
                    continue;
                }
            }
            _ => return Err(Stop::Invalid),
        }
        // A value ended at `i`: close containers until one continues.
        loop {
            if depth == 0 {
                return Ok(i);
            }
            let object = objects & (1 << (depth - 1)) != 0;
            i = whitespace(bytes, i);
            match bytes.get(i) {
                Some(b',') => {
                    i = whitespace(bytes, i + 1);
                    if object {
                        i = member_name(bytes, i)?;
                    }
                    break;
                }
                Some(b'}') if object => {
                    depth -= 1;
                    i += 1;
                }
                Some(b']') if !object => {
                    depth -= 1;
                    i += 1;
                }
                _ => return Err(Stop::Invalid),
            }
        }
    }
}

/// Skips `"name" :` and the whitespace after it, from `i` at the quote.
fn member_name(bytes: &[u8], i: usize) -> Result<usize, Stop> {
    if bytes.get(i) != Some(&b'"') {
        return Err(Stop::Invalid);
    }
    let (after, _) = string(bytes, i + 1)?;
    let colon = whitespace(bytes, after);
    if bytes.get(colon) != Some(&b':') {
        return Err(Stop::Invalid);
    }
    Ok(whitespace(bytes, colon + 1))
}

fn literal(bytes: &[u8], i: usize, word: &[u8]) -> Result<usize, Stop> {
    match bytes.get(i..i + word.len()) {
        Some(found) if found == word => Ok(i + word.len()),
        _ => Err(Stop::Invalid),
    }
}
