//! A decoding mirror of a client's HPACK encoder (RFC 7541), for
//! [`crate::normalise`].
//!
//! It decodes every header block a client sends, keeping a dynamic table in
//! step with the client's encoder, so that a `:authority` field can be found
//! wherever it is: as a literal with a new name, as a literal whose name is
//! indexed (static or dynamic table), or as an indexed field. It decodes
//! only; it never encodes beyond one raw string literal.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::OnceLock;

/// Per-entry overhead of the dynamic table (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// `SETTINGS_HEADER_TABLE_SIZE` until the client says otherwise; the h2
/// server under tonic never advertises another value.
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;

/// Longest Huffman code (RFC 7541 Appendix B).
const MAX_CODE_LEN: u8 = 30;

/// Largest integer accepted in a representation: far beyond any header a
/// server would take, and small enough never to overflow.
const MAX_INTEGER: usize = 1 << 24;

/// Why a header block could not be decoded. The caller then stops
/// normalising and lets h2 see the bytes as they are (h2 will refuse them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HpackError {
    /// The block ended inside a representation.
    Truncated,
    /// An integer beyond [`MAX_INTEGER`].
    IntegerTooLarge,
    /// Index 0, or beyond the static and dynamic tables.
    BadIndex,
    /// A Huffman string with an invalid code, EOS, or bad padding.
    BadHuffman,
    /// A dynamic table size update after the first field of a block.
    LateSizeUpdate,
}

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: Vec<u8>,
    pub(crate) value: Vec<u8>,
    /// Where the value's string literal lies in the block, when the value
    /// was sent as a literal (not taken from a table by index).
    pub(crate) literal_value: Option<Range<usize>>,
}

/// The decoder: its dynamic table mirrors the client encoder's.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Newest entry first (index 62 is `table[0]`).
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
}

impl Decoder {
    /// A decoder whose table may hold `max_size` bytes.
    pub(crate) fn new(max_size: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// Decodes one complete header block, updating the dynamic table.
    pub(crate) fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut pos = 0;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = integer(block, &mut pos, 7)?;
                let (name, value) = self.entry(index)?;
                fields.push(Field {
                    name,
                    value,
                    literal_value: None,
                });
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first field.
                if !fields.is_empty() {
                    return Err(HpackError::LateSizeUpdate);
                }
                self.max_size = integer(block, &mut pos, 5)?;
                self.evict(0);
            } else {
                // Literal header field (§6.2): with incremental indexing
                // (01), without indexing (0000) or never indexed (0001).
                let indexing = first & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let name_index = integer(block, &mut pos, prefix)?;
                let name = if name_index == 0 {
                    string(block, &mut pos)?.0
                } else {
                    self.entry(name_index)?.0
                };
                let (value, range) = string(block, &mut pos)?;
                if indexing {
                    self.insert(name.clone(), value.clone());
                }
                fields.push(Field {
                    name,
                    value,
                    literal_value: Some(range),
                });
            }
        }
        Ok(fields)
    }

    fn entry(&self, index: usize) -> Result<(Vec<u8>, Vec<u8>), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            }
            _ => self.table.get(index - 62).cloned().ok_or(HpackError::BadIndex),
        }
    }

    /// Adds an entry, evicting the oldest ones first (§4.4). An entry larger
    /// than the whole table empties it and is not added.
    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = ENTRY_OVERHEAD + name.len() + value.len();
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts until `incoming` more bytes fit (or the table is empty).
    fn evict(&mut self, incoming: usize) {
        while self.size + incoming > self.max_size {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= ENTRY_OVERHEAD + name.len() + value.len();
        }
    }
}

/// Decodes an integer with an `prefix`-bit prefix at `*pos` (§5.1).
fn integer(block: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += usize::from(byte & 0x7f) << shift;
        if value > MAX_INTEGER {
            return Err(HpackError::IntegerTooLarge);
        }
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// Decodes a string literal at `*pos` (§5.2); returns it and the byte range
/// of the whole literal (length prefix included).
fn string(block: &[u8], pos: &mut usize) -> Result<(Vec<u8>, Range<usize>), HpackError> {
    let start = *pos;
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    let value = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Ok((value, start..end))
}

/// Encodes `value` as a raw (not Huffman) string literal.
pub(crate) fn raw_string(value: &[u8], out: &mut Vec<u8>) {
    let mut len = value.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(value);
}

/// Decodes a Huffman-coded string (§5.2): padding must be fewer than eight
/// bits, all ones (the EOS prefix); EOS itself is an error.
fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let codes = huffman_codes();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let mut code = 0u32;
    let mut len = 0u8;
    for byte in raw {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if let Some(symbol) = codes.get(&(len, code)) {
                out.push(*symbol);
                code = 0;
                len = 0;
            } else if len >= MAX_CODE_LEN {
                return Err(HpackError::BadHuffman);
            }
        }
    }
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

/// Huffman-codes `value` as a string literal (tests of the normaliser).
#[cfg(test)]
pub(crate) fn huffman_string(value: &[u8], out: &mut Vec<u8>) {
    let mut bits = 0u64;
    let mut nbits = 0u32;
    let mut coded = Vec::new();
    for &b in value {
        bits = (bits << CODE_LENGTHS[usize::from(b)]) | u64::from(CODES[usize::from(b)]);
        nbits += u32::from(CODE_LENGTHS[usize::from(b)]);
        while nbits >= 8 {
            nbits -= 8;
            coded.push((bits >> nbits) as u8);
        }
    }
    if nbits > 0 {
        let pad = 8 - nbits;
        coded.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
    assert!(coded.len() < 0x7f);
    out.push(0x80 | coded.len() as u8);
    out.extend(coded);
}

/// (length, code) → byte, built once from the code table.
fn huffman_codes() -> &'static HashMap<(u8, u32), u8> {
    static CODES_BY_BITS: OnceLock<HashMap<(u8, u32), u8>> = OnceLock::new();
    CODES_BY_BITS.get_or_init(|| {
        (0u8..=255)
            .map(|b| ((CODE_LENGTHS[usize::from(b)], CODES[usize::from(b)]), b))
            .collect()
    })
}

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Huffman code of each byte value (RFC 7541 Appendix B), right-aligned.
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea,
    0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef,
    0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7,
    0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa,
    0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd,
    0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74,
    0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5,
    0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf, 0xffffec,
    0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4, 0x1fffdc, 0x3fffd8,
    0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc,
    0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb,
    0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea,
    0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb,
    0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2,
    0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec,
    0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee,
    0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed,
    0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee,
    0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// Length in bits of each code of [`CODES`].
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6,
    6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7,
    8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7,
    15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24,
    23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23,
    23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26,
    26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20,
    21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27,
    27, 27, 26,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8(f.name.clone()).unwrap(),
                    String::from_utf8(f.value.clone()).unwrap(),
                )
            })
            .collect()
    }

    fn expected(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// RFC 7541 Appendix C.3 (requests without Huffman) and C.4 (the same
    /// requests with Huffman), each three blocks on one connection, with the
    /// dynamic table size the RFC prints after each block.
    #[test]
    fn rfc7541_request_examples() {
        let first = expected(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]);
        let second = expected(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ]);
        let third = expected(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        let c3 = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let c4 = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [c3, c4] {
            let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
            for (block, (want, size)) in blocks.iter().zip([(&first, 57), (&second, 110), (&third, 164)]) {
                assert_eq!(&pairs(&decoder.decode(&hex(block)).unwrap()), want);
                assert_eq!(decoder.size, size);
            }
        }
    }

    /// RFC 7541 C.5: responses with a 256-byte table, so entries are evicted.
    #[test]
    fn rfc7541_eviction_example() {
        let mut decoder = Decoder::new(256);
        let blocks = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
        ];
        decoder.decode(&hex(blocks[0])).unwrap();
        assert_eq!(decoder.size, 222);
        let fields = decoder.decode(&hex(blocks[1])).unwrap();
        assert_eq!(
            pairs(&fields),
            expected(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(decoder.size, 222);
    }

    #[test]
    fn hostile_blocks_are_errors() {
        struct Case {
            name: &'static str,
            block: &'static str,
            expected: HpackError,
        }
        let cases = [
            Case {
                name: "index zero",
                block: "80",
                expected: HpackError::BadIndex,
            },
            Case {
                name: "empty dynamic table",
                block: "be",
                expected: HpackError::BadIndex,
            },
            Case {
                name: "string past the end",
                block: "4105 6162",
                expected: HpackError::Truncated,
            },
            Case {
                name: "integer past the end",
                block: "ff",
                expected: HpackError::Truncated,
            },
            Case {
                name: "huge integer",
                block: "41 7f ff ff ff ff 0f",
                expected: HpackError::IntegerTooLarge,
            },
            // 0x81 0xff: one Huffman byte of eight ones, a padding of 8 bits.
            Case {
                name: "padding of a whole byte",
                block: "41 81 ff",
                expected: HpackError::BadHuffman,
            },
            // 'a' is 00011 (5 bits); 000 padding is not the EOS prefix.
            Case {
                name: "zero padding",
                block: "41 81 18",
                expected: HpackError::BadHuffman,
            },
            Case {
                name: "size update after a field",
                block: "82 3f e1 1f",
                expected: HpackError::LateSizeUpdate,
            },
        ];
        for case in cases {
            let got = Decoder::new(DEFAULT_TABLE_SIZE).decode(&hex(case.block));
            assert_eq!(got, Err(case.expected), "{}", case.name);
        }
    }

    #[test]
    fn raw_string_lengths_cross_the_prefix() {
        for len in [0, 1, 126, 127, 128, 300] {
            let value = vec![b'x'; len];
            let mut out = Vec::new();
            raw_string(&value, &mut out);
            let mut pos = 0;
            let (decoded, range) = string(&out, &mut pos).unwrap();
            assert_eq!(decoded, value);
            assert_eq!(range, 0..out.len());
        }
    }
}
