//! The `text_stats` adapter against the same statistics computed in Rust.

mod common;

use common::{limits, prepare, sandbox};

/// The statistics the adapter must return for the decoded string `s`.
fn expected(s: &str) -> String {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}');
    let words = s.split(is_space).filter(|w| !w.is_empty()).count();
    let lines = if s.is_empty() {
        0
    } else {
        s.matches('\n').count() + 1
    };
    format!(
        r#"{{"characters":{},"words":{},"lines":{},"bytes":{}}}"#,
        s.chars().count(),
        words,
        lines,
        s.len()
    )
}

/// JSON string encoding that exercises every escape form: short escapes, `\u00XX` for other
/// controls, and, for every `nth` non-ASCII character, `\uXXXX` (a surrogate pair above U+FFFF).
fn encode(s: &str, nth: usize) -> String {
    let mut out = String::from("\"");
    let mut seen = 0usize;
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if !c.is_ascii() => {
                seen += 1;
                if nth > 0 && seen.is_multiple_of(nth) {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                } else {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// About 100 KB of mixed text from a fixed linear congruential sequence.
fn big_text() -> String {
    const PIECES: &[&str] = &[
        "word",
        " ",
        "  ",
        "\n",
        "\t",
        "é",
        "日本語",
        "🎉",
        "\u{b}",
        "\u{c}",
        "\r\n",
        "\"",
        "\\",
        "/",
        "Ωmega",
        "𝄞",
        "x",
        "\u{1}",
        "end.",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut s = String::new();
    while s.len() < 100_000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        s.push_str(PIECES[(state >> 33) as usize % PIECES.len()]);
    }
    s
}

struct Case {
    name: &'static str,
    input: String,
    expected: String,
}

fn stats_case(name: &'static str, input: &str, decoded: &str) -> Case {
    Case {
        name,
        input: input.to_owned(),
        expected: expected(decoded),
    }
}

fn error_case(name: &'static str, input: &str, error: &str) -> Case {
    Case {
        name,
        input: input.to_owned(),
        expected: format!(r#"{{"error":"{error}"}}"#),
    }
}

#[test]
fn text_stats_matches_rust_on_a_table_of_inputs() {
    let big = big_text();
    let cases = vec![
        stats_case("empty", r#"{"text":""}"#, ""),
        stats_case("ascii", r#"{"text":"hello world"}"#, "hello world"),
        stats_case(
            "surrounding_spaces",
            r#"{"text":"  a  b  \n\n c "}"#,
            "  a  b  \n\n c ",
        ),
        stats_case("only_newline", r#"{"text":"\n"}"#, "\n"),
        stats_case("trailing_newline", r#"{"text":"one\ntwo\n"}"#, "one\ntwo\n"),
        stats_case(
            "multibyte_raw",
            r#"{"text":"héllo wörld — 日本語 🎉"}"#,
            "héllo wörld — 日本語 🎉",
        ),
        stats_case(
            "short_escapes",
            r#"{"text":"a\"b\\c\/d\be\ff\ng\rh\ti"}"#,
            "a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti",
        ),
        stats_case("unicode_escapes", r#"{"text":"\u00e9\u65E5 \u0041"}"#, "é日 A"),
        stats_case("surrogate_pair_lower", r#"{"text":"\ud83c\udf89!"}"#, "🎉!"),
        stats_case("surrogate_pair_upper", r#"{"text":"x \uD834\uDD1E y"}"#, "x 𝄞 y"),
        stats_case(
            "vertical_tab_and_form_feed_split_words",
            r#"{"text":"a\u000bb\fc"}"#,
            "a\u{b}b\u{c}c",
        ),
        stats_case("nul_escape_is_a_character", r#"{"text":"a\u0000b"}"#, "a\u{0}b"),
        stats_case(
            "whitespace_between_tokens",
            "  {\n\t\"text\" :\r\n \"x y\" \n}  ",
            "x y",
        ),
        stats_case(
            "other_members_skipped",
            r#"{"lang":"en","n":[1,{"x":"}]"}],"ok":true,"text":"a b","z":null}"#,
            "a b",
        ),
        stats_case("escaped_key", r#"{"t\u0065xt":"abc"}"#, "abc"),
        stats_case(
            "first_text_member_wins",
            r#"{"text":"one","text":"two three"}"#,
            "one",
        ),
        Case {
            name: "generated_100kb_raw",
            input: format!(r#"{{"text":{}}}"#, encode(&big, 0)),
            expected: expected(&big),
        },
        Case {
            name: "generated_100kb_escaped",
            input: format!(r#"{{"text":{}}}"#, encode(&big, 3)),
            expected: expected(&big),
        },
        error_case("empty_object", "{}", "text_missing"),
        error_case("text_is_number", r#"{"text":5}"#, "text_missing"),
        error_case("text_is_null", r#"{"text":null}"#, "text_missing"),
        error_case("text_is_array", r#"{"text":["a"]}"#, "text_missing"),
        error_case("other_key_only", r#"{"texts":"abc"}"#, "text_missing"),
        error_case("not_json", "not json", "invalid_json"),
        error_case("empty_input", "", "invalid_json"),
        error_case("array_top_level", r#"["text"]"#, "invalid_json"),
        error_case("unterminated_string", r#"{"text":"abc"#, "invalid_json"),
        error_case("lone_high_surrogate", r#"{"text":"\ud800"}"#, "invalid_json"),
        error_case("lone_low_surrogate", r#"{"text":"\udc00x"}"#, "invalid_json"),
        error_case("high_then_non_low", r#"{"text":"\ud800\u0041"}"#, "invalid_json"),
        error_case("bad_escape", r#"{"text":"\x"}"#, "invalid_json"),
        error_case("short_unicode_escape", r#"{"text":"\u12"}"#, "invalid_json"),
        error_case("raw_control_character", "{\"text\":\"a\tb\"}", "invalid_json"),
        error_case("trailing_garbage", r#"{"text":"a"} x"#, "invalid_json"),
        error_case("missing_colon", r#"{"text" "a"}"#, "invalid_json"),
        error_case("trailing_comma", r#"{"text":"a",}"#, "invalid_json"),
    ];

    let sandbox = sandbox();
    let prepared = prepare(&sandbox, "text_stats");
    for case in &cases {
        let outcome = sandbox.run(&prepared, case.input.as_bytes(), limits());
        let output = outcome
            .result
            .unwrap_or_else(|e| panic!("{}: run failed: {e}", case.name));
        let output = String::from_utf8(output).expect("utf-8 output");
        assert_eq!(output, case.expected, "case {}", case.name);
        assert!(
            outcome.measured.fuel_consumed > 0,
            "case {}: no fuel measured",
            case.name
        );
    }
}

#[test]
fn measured_fuel_is_deterministic_for_the_same_input() {
    let sandbox = sandbox();
    let prepared = prepare(&sandbox, "text_stats");
    let input = br#"{"text":"the same input twice \u00e9 \ud83c\udf89"}"#;
    let first = sandbox.run(&prepared, input, limits());
    let second = sandbox.run(&prepared, input, limits());
    assert!(first.result.is_ok() && second.result.is_ok());
    assert!(first.measured.fuel_consumed > 0);
    assert_eq!(first.measured.fuel_consumed, second.measured.fuel_consumed);
    // The adapter declares two pages and its input fits in them.
    assert_eq!(first.measured.peak_memory_bytes, 2 * 65536);
}
