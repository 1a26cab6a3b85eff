#![allow(clippy::unwrap_used, clippy::expect_used)]
//! RFC 8785 conformance: the cyberphone test data byte for byte, hostile
//! inputs with their exact errors, and agreement with Python's `rfc8785`.

mod common;

use serde_json::{Map, Number, Value};
use soma_sign::SignError;
use soma_sign::jcs::{canonicalize, canonicalize_json, parse_strict};

#[test]
fn cyberphone_testdata_byte_exact() {
    let input_dir = common::vectors("jcs/testdata/input");
    let output_dir = common::vectors("jcs/testdata/output");
    let outhex_dir = common::vectors("jcs/testdata/outhex");
    let mut names: Vec<_> = std::fs::read_dir(&input_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 6,
        "expected at least 6 JCS inputs, found {names:?}"
    );
    for name in &names {
        let input = std::fs::read(input_dir.join(name)).unwrap();
        let expected = std::fs::read(output_dir.join(name)).unwrap();
        let got = canonicalize_json(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "{name}"
        );
        assert_eq!(got, expected, "{name}");
        // The hex rendering of the same expected bytes.
        let hex_name = name.replace(".json", ".txt");
        let hex_text = std::fs::read_to_string(outhex_dir.join(&hex_name)).unwrap();
        let hex: String = hex_text.split_whitespace().collect();
        assert_eq!(common::to_hex(&got), hex.to_lowercase(), "{hex_name}");
        // Canonical output is a fixed point.
        assert_eq!(canonicalize_json(&got).unwrap(), got, "{name} not idempotent");
        // The serde_json::Value path agrees with the strict text path.
        let value: Value = serde_json::from_slice(&input).unwrap();
        assert_eq!(canonicalize(&value).unwrap(), got, "{name} via serde_json::Value");
    }
    println!("jcs testdata: {} files byte-exact", names.len());
}

#[test]
fn utf16_key_order() {
    // U+1F602 (UTF-16 D83D DE02) sorts before U+FB33 in UTF-16 but after it in UTF-8 / code points.
    let got = canonicalize_json("{\"\u{fb33}\":1,\"\u{1f602}\":2}".as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "{\"\u{1f602}\":2,\"\u{fb33}\":1}"
    );
}

#[test]
fn string_escapes() {
    let got = canonicalize_json(br#""\u0000\u001f\u007f\b\f\n\r\t\/\"\\\u00e9\ud83d\ude02""#).unwrap();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "\"\\u0000\\u001f\u{7f}\\b\\f\\n\\r\\t/\\\"\\\\\u{e9}\u{1f602}\""
    );
}

#[test]
fn numbers_in_text() {
    let cases: &[(&str, &str)] = &[
        ("-0", "0"),
        ("-0.0e7", "0"),
        ("1E30", "1e+30"),
        ("1e21", "1e+21"),
        ("1e20", "100000000000000000000"),
        ("0.000001", "0.000001"),
        ("0.0000001", "1e-7"),
        ("9007199254740993", "9007199254740992"),
        ("1e-400", "0"),
        ("4.50", "4.5"),
        ("123456789012345678901234567890", "1.2345678901234568e+29"),
        ("0.1", "0.1"),
        ("-1.5e-9", "-1.5e-9"),
        ("2.2250738585072014e-308", "2.2250738585072014e-308"),
    ];
    for (input, expected) in cases {
        let got = canonicalize_json(input.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), *expected, "input {input}");
    }
}

struct Case {
    name: &'static str,
    input: &'static [u8],
    expected: SignError,
}

#[test]
fn hostile_inputs_exact_errors() {
    let cases = [
        Case {
            name: "duplicate key",
            input: br#"{"a":1,"b":2,"a":3}"#,
            expected: SignError::DuplicateKey { key: "a".into() },
        },
        Case {
            name: "duplicate key after unescaping",
            input: br#"{"a":1,"\u0061":2}"#,
            expected: SignError::DuplicateKey { key: "a".into() },
        },
        Case {
            name: "nested duplicate key",
            input: br#"[{"x":{"k":1,"k":1}}]"#,
            expected: SignError::DuplicateKey { key: "k".into() },
        },
        Case {
            name: "lone high surrogate",
            input: br#"["\ud800"]"#,
            expected: SignError::LoneSurrogate { offset: 2 },
        },
        Case {
            name: "high surrogate then non-surrogate escape",
            input: br#""\ud800\u0041""#,
            expected: SignError::LoneSurrogate { offset: 1 },
        },
        Case {
            name: "high surrogate then literal",
            input: br#""\ud83dx""#,
            expected: SignError::LoneSurrogate { offset: 1 },
        },
        Case {
            name: "lone low surrogate",
            input: br#""\ude02""#,
            expected: SignError::LoneSurrogate { offset: 1 },
        },
        Case {
            name: "NaN token",
            input: b"[NaN]",
            expected: SignError::NonFiniteLiteral { offset: 1 },
        },
        Case {
            name: "Infinity token",
            input: b"Infinity",
            expected: SignError::NonFiniteLiteral { offset: 0 },
        },
        Case {
            name: "-Infinity token",
            input: b"{\"a\": -Infinity}",
            expected: SignError::NonFiniteLiteral { offset: 6 },
        },
        Case {
            name: "overflowing number",
            input: b"[1e309]",
            expected: SignError::NumberOutOfRange { offset: 1 },
        },
        Case {
            name: "overflowing negative number",
            input: b"-1.8e308",
            expected: SignError::NumberOutOfRange { offset: 0 },
        },
        Case {
            name: "trailing garbage",
            input: b"{} x",
            expected: SignError::TrailingData { offset: 3 },
        },
        Case {
            name: "two documents",
            input: b"1 2",
            expected: SignError::TrailingData { offset: 2 },
        },
        Case {
            name: "trailing comma in array",
            input: b"[1,]",
            expected: SignError::UnexpectedCharacter {
                offset: 3,
                found: ']',
            },
        },
        Case {
            name: "trailing comma in object",
            input: br#"{"a":1,}"#,
            expected: SignError::UnexpectedCharacter {
                offset: 7,
                found: '}',
            },
        },
        Case {
            name: "leading zero",
            input: b"01",
            expected: SignError::MalformedNumber { offset: 0 },
        },
        Case {
            name: "bare minus",
            input: b"-",
            expected: SignError::MalformedNumber { offset: 0 },
        },
        Case {
            name: "no fraction digits",
            input: b"1.",
            expected: SignError::MalformedNumber { offset: 0 },
        },
        Case {
            name: "no exponent digits",
            input: b"1e+",
            expected: SignError::MalformedNumber { offset: 0 },
        },
        Case {
            name: "leading plus",
            input: b"+1",
            expected: SignError::UnexpectedCharacter {
                offset: 0,
                found: '+',
            },
        },
        Case {
            name: "hex number",
            input: b"0x10",
            expected: SignError::TrailingData { offset: 1 },
        },
        Case {
            name: "single quotes",
            input: b"'a'",
            expected: SignError::UnexpectedCharacter {
                offset: 0,
                found: '\'',
            },
        },
        Case {
            name: "raw control in string",
            input: b"\"a\nb\"",
            expected: SignError::ControlCharacterInString { offset: 2 },
        },
        Case {
            name: "unknown escape",
            input: br#""\x41""#,
            expected: SignError::InvalidEscape { offset: 1 },
        },
        Case {
            name: "short unicode escape",
            input: br#""\u12""#,
            expected: SignError::InvalidEscape { offset: 1 },
        },
        Case {
            name: "invalid utf-8",
            input: b"\"\xff\"",
            expected: SignError::InvalidUtf8 { offset: 1 },
        },
        Case {
            name: "byte order mark",
            input: b"\xef\xbb\xbf{}",
            expected: SignError::UnexpectedCharacter {
                offset: 0,
                found: '\u{feff}',
            },
        },
        Case {
            name: "empty input",
            input: b"",
            expected: SignError::UnexpectedEnd,
        },
        Case {
            name: "unterminated string",
            input: b"\"abc",
            expected: SignError::UnexpectedEnd,
        },
        Case {
            name: "unterminated object",
            input: br#"{"a":1"#,
            expected: SignError::UnexpectedEnd,
        },
        Case {
            name: "comment",
            input: b"[1 /* c */]",
            expected: SignError::UnexpectedCharacter {
                offset: 3,
                found: '/',
            },
        },
        Case {
            name: "misspelt literal",
            input: b"tru",
            expected: SignError::UnexpectedEnd,
        },
        Case {
            name: "non-string key",
            input: b"{1:2}",
            expected: SignError::UnexpectedCharacter {
                offset: 1,
                found: '1',
            },
        },
    ];
    for case in &cases {
        let err = canonicalize_json(case.input).expect_err(case.name);
        assert_eq!(
            format!("{err:?}"),
            format!("{:?}", case.expected),
            "case {}",
            case.name
        );
    }
    println!(
        "jcs hostile inputs: {} rejected with their exact errors",
        cases.len()
    );
}

#[test]
fn nesting_limit() {
    let ok = format!(
        "{}{}",
        "[".repeat(soma_sign::jcs::MAX_DEPTH),
        "]".repeat(soma_sign::jcs::MAX_DEPTH)
    );
    assert!(canonicalize_json(ok.as_bytes()).is_ok());
    let deep = format!(
        "{}{}",
        "[".repeat(soma_sign::jcs::MAX_DEPTH + 1),
        "]".repeat(soma_sign::jcs::MAX_DEPTH + 1)
    );
    let err = canonicalize_json(deep.as_bytes()).unwrap_err();
    assert!(
        matches!(err, SignError::NestingTooDeep { limit } if limit == soma_sign::jcs::MAX_DEPTH),
        "{err:?}"
    );
    // A hostile depth far beyond the limit fails cleanly instead of overflowing the stack.
    let hostile = "[".repeat(1_000_000);
    assert!(matches!(
        canonicalize_json(hostile.as_bytes()),
        Err(SignError::NestingTooDeep { .. })
    ));
}

/// A small deterministic generator (SplitMix64), so a failing value can be reproduced.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn string(&mut self) -> String {
        const POOL: &[char] = &[
            'a',
            'b',
            'A',
            'Z',
            '0',
            '9',
            ' ',
            '"',
            '\\',
            '/',
            '\n',
            '\r',
            '\t',
            '\u{0}',
            '\u{1f}',
            '\u{7f}',
            '\u{80}',
            'é',
            'ö',
            '€',
            '\u{fb33}',
            '\u{ffff}',
            '\u{1f602}',
            '\u{10ffff}',
            '\u{2028}',
            '<',
        ];
        let len = self.below(6);
        (0..len)
            .map(|_| POOL[self.below(POOL.len() as u64) as usize])
            .collect()
    }

    fn number(&mut self) -> Number {
        match self.below(5) {
            // Integers inside ±(2^53 − 1), the range Python's rfc8785 accepts for ints.
            0 => Number::from((self.next() >> 11) as i64 * if self.below(2) == 0 { 1 } else { -1 }),
            1 => Number::from(self.below(1000) as i64 - 500),
            // Any finite double, from its bits.
            2 => loop {
                let f = f64::from_bits(self.next());
                if f.is_finite() {
                    break Number::from_f64(f).unwrap();
                }
            },
            // Around the notation switch points 1e-7 and 1e21.
            3 => {
                let exp = [-8, -7, -6, -5, 19, 20, 21, 22][self.below(8) as usize];
                let mantissa = (self.below(1_000_000) as f64 + 1.0) / 100_000.0;
                Number::from_f64(mantissa * 10f64.powi(exp)).unwrap()
            }
            _ => Number::from_f64((self.below(100_000) as f64) / 64.0).unwrap(),
        }
    }

    fn value(&mut self, depth: u32) -> Value {
        let pick = if depth >= 4 { self.below(4) } else { self.below(6) };
        match pick {
            0 => [Value::Null, Value::Bool(true), Value::Bool(false)][self.below(3) as usize].clone(),
            1 => Value::Number(self.number()),
            2 | 3 => Value::String(self.string()),
            4 => Value::Array((0..self.below(5)).map(|_| self.value(depth + 1)).collect()),
            _ => {
                let mut m = Map::new();
                for _ in 0..self.below(6) {
                    let k = self.string();
                    let v = self.value(depth + 1);
                    m.insert(k, v);
                }
                Value::Object(m)
            }
        }
    }
}

#[test]
fn agrees_with_python_rfc8785() {
    const COUNT: usize = 400;
    let mut g = Gen(0x005e_ed0f_50a1_u64);
    let values: Vec<Value> = (0..COUNT).map(|_| g.value(0)).collect();
    let lines: String = values
        .iter()
        .map(|v| serde_json::to_string(v).unwrap() + "\n")
        .collect();
    let script = r#"
import json, sys, rfc8785
for line in sys.stdin:
    sys.stdout.write(rfc8785.dumps(json.loads(line)).hex() + "\n")
"#;
    let out = common::run_python("rfc8785", script, &lines);
    let expected: Vec<&str> = out.lines().collect();
    assert_eq!(expected.len(), COUNT, "python returned {} lines", expected.len());
    for ((value, line), python_hex) in values.iter().zip(lines.lines()).zip(&expected) {
        let via_value = canonicalize(value).unwrap();
        let via_text = canonicalize_json(line.as_bytes()).unwrap();
        assert_eq!(common::to_hex(&via_value), *python_hex, "value {line}");
        assert_eq!(via_text, via_value, "text path differs for {line}");
        // The strict parser reads the canonical bytes back to the same value.
        assert_eq!(
            canonicalize(&parse_strict(&via_value).unwrap()).unwrap(),
            via_value
        );
    }
    println!("jcs interop: {COUNT} generated values byte-identical with python rfc8785");
}
