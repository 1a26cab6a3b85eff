//! Lowercase hexadecimal: the one spelling of digests and key ids in
//! manifests, bundles, statements and MACed row contents.

/// Encodes `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes exactly 64 lowercase hex digits into 32 bytes; anything else
/// (uppercase included, so that a digest has one spelling) is `None`.
pub fn decode_32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let bytes: Vec<u8> = (0..32).map(|i| i * 8 + 1).collect();
        let text = encode(&bytes);
        assert_eq!(&text[..8], "01091119");
        assert_eq!(encode(&[0x00, 0x0f, 0xf0, 0xff, 0xa5]), "000ff0ffa5");
        assert_eq!(encode(&[]), "");
        assert_eq!(decode_32(&text).unwrap().to_vec(), bytes);
        assert!(decode_32(&text.to_uppercase()).is_none());
        assert!(decode_32(&text[..62]).is_none());
        assert!(decode_32(&format!("{}g", &text[..63])).is_none());
    }
}
