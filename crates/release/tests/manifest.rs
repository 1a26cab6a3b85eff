#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The release manifest: its canonical bytes against Python `rfc8785`, and
//! every hostile payload refused with its own reason and member path.

mod common;

use serde_json::json;
use soma_release::{Limits, Manifest, ReleaseError};

/// A manifest canonicalised by Python `rfc8785.dumps` (non-ASCII text, an
/// escaped quote and newline, an astral character), with its SHA-256.
const PY_CANONICAL: &str = "{\"description\":\"Echoes its input — «ünïcödé» \\\"quoted\\\"\\n😀\",\
\"entrypoint\":\"run\",\"limits\":{\"deadline_ms\":1500,\"fuel\":1000000,\"memory_bytes\":1048576},\
\"module_sha256\":\"93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476\",\"module_size\":8,\
\"tool\":\"echo\",\"version\":\"1.2.0-rc.1+build.5\"}";
const PY_DIGEST: &str = "0166d73f09c4bdd2e61749b6bc6fdeb760393c83a3eed07292619e24bff8f9f4";
/// The 8-byte module of that manifest: the WebAssembly header alone.
const WASM_HEADER: &[u8] = b"\x00asm\x01\x00\x00\x00";

#[test]
fn canonical_bytes_match_python_rfc8785() {
    let built = Manifest::new(
        "echo",
        "1.2.0-rc.1+build.5",
        "run",
        Limits {
            fuel: 1_000_000,
            memory_bytes: 1_048_576,
            deadline_ms: 1_500,
        },
        "Echoes its input — «ünïcödé» \"quoted\"\n😀",
        WASM_HEADER,
    )
    .unwrap();
    assert_eq!(String::from_utf8(built.canonical()).unwrap(), PY_CANONICAL);
    assert_eq!(common::to_hex(&built.digest()), PY_DIGEST);

    let parsed = Manifest::parse(PY_CANONICAL.as_bytes()).unwrap();
    assert_eq!(parsed, built);
    assert_eq!(parsed.canonical_bytes(), PY_CANONICAL.as_bytes());
    assert_eq!(parsed.tool(), "echo");
    assert_eq!(parsed.version().as_str(), "1.2.0-rc.1+build.5");
    assert_eq!(parsed.module_size(), 8);
    assert_eq!(parsed.entrypoint(), "run");
    assert_eq!(parsed.limits().memory_bytes, 1_048_576);
    assert!(parsed.description().ends_with('😀'));
    assert_eq!(
        common::to_hex(parsed.module_sha256()),
        "93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476"
    );

    // The same manifest as a JSON value (as converted from a protobuf Struct, numbers as doubles).
    let value = json!({
        "tool": "echo", "version": "1.2.0-rc.1+build.5", "entrypoint": "run",
        "module_sha256": "93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476",
        "module_size": 8.0,
        "limits": {"fuel": 1_000_000.0, "memory_bytes": 1_048_576, "deadline_ms": 1500},
        "description": "Echoes its input — «ünïcödé» \"quoted\"\n😀",
    });
    assert_eq!(Manifest::from_value(&value).unwrap(), built);
}

#[test]
fn check_module_size_then_digest() {
    let manifest = Manifest::parse(PY_CANONICAL.as_bytes()).unwrap();
    manifest.check_module(WASM_HEADER).unwrap();
    let err = manifest.check_module(b"\x00asm\x01\x00\x00").unwrap_err();
    assert_eq!(err.reason(), "module_size_mismatch");
    assert_eq!(
        err.to_string(),
        "module is 7 bytes, the manifest's module_size is 8"
    );
    let err = manifest.check_module(b"\x00asm\x02\x00\x00\x00").unwrap_err();
    assert_eq!(err.reason(), "module_digest_mismatch");
    // A module of the wrong size is refused for its size, whatever its digest.
    let err = manifest.check_module(b"").unwrap_err();
    assert_eq!(err.reason(), "module_size_mismatch");
}

/// The members of a valid canonical manifest as raw JSON text, in canonical order.
fn base_members() -> Vec<(String, String)> {
    [
        ("description", r#""Echoes its input.""#.to_owned()),
        ("entrypoint", r#""run""#.to_owned()),
        ("limits", limits("1000000", "1048576", "1500")),
        (
            "module_sha256",
            r#""93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476""#.to_owned(),
        ),
        ("module_size", "8".to_owned()),
        ("tool", r#""echo""#.to_owned()),
        ("version", r#""1.0.0""#.to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect()
}

fn limits(fuel: &str, memory_bytes: &str, deadline_ms: &str) -> String {
    format!(r#"{{"deadline_ms":{deadline_ms},"fuel":{fuel},"memory_bytes":{memory_bytes}}}"#)
}

/// The base manifest with members replaced (`Some`), removed (`None`) or,
/// when not present, appended.
fn doc(edits: &[(&str, Option<&str>)]) -> String {
    let mut members = base_members();
    for (name, raw) in edits {
        match (members.iter().position(|(n, _)| n == name), raw) {
            (Some(i), Some(raw)) => members[i].1 = (*raw).to_owned(),
            (Some(i), None) => {
                members.remove(i);
            }
            (None, Some(raw)) => members.push(((*name).to_owned(), (*raw).to_owned())),
            (None, None) => {}
        }
    }
    let body: Vec<String> = members.iter().map(|(n, v)| format!("\"{n}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

struct Case {
    name: &'static str,
    payload: Vec<u8>,
    reason: &'static str,
    message: &'static str,
}

fn case(
    name: &'static str,
    payload: impl Into<Vec<u8>>,
    reason: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        payload: payload.into(),
        reason,
        message,
    }
}

#[test]
fn accepted_edges() {
    let max = "9007199254740991";
    for (name, text) in [
        ("base", doc(&[])),
        (
            "fuel 2^53-1",
            doc(&[("limits", Some(&limits(max, "65536", max)))]),
        ),
        (
            "largest page multiple",
            doc(&[("limits", Some(&limits("1", "9007199254675456", "1")))]),
        ),
        ("module_size 2^53-1", doc(&[("module_size", Some(max))])),
        ("empty description", doc(&[("description", Some(r#""""#))])),
        (
            "1024-character description of 4-byte characters",
            doc(&[("description", Some(&format!("\"{}\"", "😀".repeat(1024))))]),
        ),
        (
            "64-character tool",
            doc(&[("tool", Some(&format!("\"{}\"", "a".repeat(64))))]),
        ),
        (
            "tool of digits, dots, dashes",
            doc(&[("tool", Some(r#""0.a_b-c""#))]),
        ),
        ("entrypoint _", doc(&[("entrypoint", Some(r#""_""#))])),
        (
            "64-character entrypoint",
            doc(&[("entrypoint", Some(&format!("\"{}\"", "Z".repeat(64))))]),
        ),
    ] {
        let manifest = Manifest::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(manifest.canonical(), text.as_bytes(), "{name}");
    }
}

#[test]
fn hostile_manifests_table() {
    let max = "9007199254740991";
    let cases = [
        // ---- JSON ----
        case(
            "invalid utf-8",
            b"{\"description\":\"\xff\"}".to_vec(),
            "manifest_invalid_json",
            "manifest is not valid json",
        ),
        case(
            "truncated",
            &doc(&[]).as_bytes()[..40],
            "manifest_invalid_json",
            "manifest is not valid json",
        ),
        case(
            "NaN",
            doc(&[("module_size", Some("NaN"))]),
            "manifest_invalid_json",
            "manifest is not valid json",
        ),
        case(
            "trailing data",
            format!("{} {{}}", doc(&[])),
            "manifest_invalid_json",
            "manifest is not valid json",
        ),
        case(
            "trailing whitespace",
            format!("{} ", doc(&[])),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case("empty", "", "manifest_invalid_json", "manifest is not valid json"),
        case(
            "duplicate member",
            doc(&[]).replacen("{", r#"{"tool":"echo","#, 1),
            "manifest_duplicate_key",
            r#"manifest has a duplicate member "tool""#,
        ),
        case(
            "duplicate member after unescaping",
            doc(&[]).replacen("{", r#"{"t\u006fol":"echo","#, 1),
            "manifest_duplicate_key",
            r#"manifest has a duplicate member "tool""#,
        ),
        case(
            "lone surrogate",
            doc(&[("description", Some(r#""\ud83d""#))]),
            "manifest_lone_surrogate",
            "manifest has a lone surrogate escape at byte 16",
        ),
        case(
            "number overflowing a double",
            doc(&[("module_size", Some("1e400"))]),
            "manifest_number_out_of_range",
            "manifest number at byte 219 is out of range (integers are within 0..=2^53-1)",
        ),
        // ---- integers beyond 2^53 - 1 ----
        case(
            "fuel 2^53",
            doc(&[("limits", Some(&limits("9007199254740992", "65536", "1")))]),
            "manifest_number_out_of_range",
            "manifest number at limits.fuel is out of range (integers are within 0..=2^53-1)",
        ),
        case(
            "fuel 2^53+1 (rounds to 2^53 as a double)",
            doc(&[("limits", Some(&limits("9007199254740993", "65536", "1")))]),
            "manifest_number_out_of_range",
            "manifest number at limits.fuel is out of range (integers are within 0..=2^53-1)",
        ),
        case(
            "deadline 1e300",
            doc(&[("limits", Some(&limits("1", "65536", "1e300")))]),
            "manifest_number_out_of_range",
            "manifest number at limits.deadline_ms is out of range (integers are within 0..=2^53-1)",
        ),
        case(
            "module_size -2^53",
            doc(&[("module_size", Some("-9007199254740992"))]),
            "manifest_number_out_of_range",
            "manifest number at module_size is out of range (integers are within 0..=2^53-1)",
        ),
        case(
            "huge number in an unknown member (range is checked first)",
            doc(&[("zzz", Some("[1,2e20]"))]),
            "manifest_number_out_of_range",
            "manifest number at zzz[1] is out of range (integers are within 0..=2^53-1)",
        ),
        // ---- canonical form ----
        case(
            "insignificant whitespace",
            doc(&[]).replacen(':', ": ", 1),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "pretty printed",
            format!("{}\n", doc(&[])).replace(',', ",\n  "),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "members out of order",
            {
                let d = doc(&[("description", None)]);
                format!("{},\"description\":\"Echoes its input.\"}}", &d[..d.len() - 1])
            },
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "fuel 1e6",
            doc(&[("limits", Some(&limits("1e6", "65536", "1")))]),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "module_size 8.0",
            doc(&[("module_size", Some("8.0"))]),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "module_size -0",
            doc(&[("module_size", Some("-0"))]),
            "manifest_invalid_value",
            "manifest member module_size is invalid: must be at least 1",
        ),
        case(
            "needless escape",
            doc(&[("description", Some(r#""Echoes its \u0069nput.""#))]),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "escaped solidus",
            doc(&[("description", Some(r#""a\/b""#))]),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "uppercase unicode escape of a control",
            doc(&[("description", Some(r#""\u001F""#))]),
            "manifest_not_canonical",
            "manifest is not in rfc 8785 canonical form",
        ),
        case(
            "byte order mark",
            [&b"\xef\xbb\xbf"[..], doc(&[]).as_bytes()].concat(),
            "manifest_invalid_json",
            "manifest is not valid json",
        ),
        // ---- members ----
        case(
            "not an object",
            r#"["echo"]"#,
            "manifest_wrong_type",
            "manifest member manifest must be a json object",
        ),
        case(
            "unknown member",
            doc(&[("extra", Some("1"))]),
            "manifest_unknown_field",
            "manifest member extra is not a known field",
        ),
        case(
            "unknown limits member",
            doc(&[(
                "limits",
                Some(r#"{"cpu":1,"deadline_ms":1,"fuel":1,"memory_bytes":65536}"#),
            )]),
            "manifest_unknown_field",
            "manifest member limits.cpu is not a known field",
        ),
        case(
            "missing tool",
            doc(&[("tool", None)]),
            "manifest_missing_field",
            "manifest member tool is missing",
        ),
        case(
            "missing version",
            doc(&[("version", None)]),
            "manifest_missing_field",
            "manifest member version is missing",
        ),
        case(
            "missing module_sha256",
            doc(&[("module_sha256", None)]),
            "manifest_missing_field",
            "manifest member module_sha256 is missing",
        ),
        case(
            "missing module_size",
            doc(&[("module_size", None)]),
            "manifest_missing_field",
            "manifest member module_size is missing",
        ),
        case(
            "missing entrypoint",
            doc(&[("entrypoint", None)]),
            "manifest_missing_field",
            "manifest member entrypoint is missing",
        ),
        case(
            "missing limits",
            doc(&[("limits", None)]),
            "manifest_missing_field",
            "manifest member limits is missing",
        ),
        case(
            "missing description",
            doc(&[("description", None)]),
            "manifest_missing_field",
            "manifest member description is missing",
        ),
        case(
            "missing limits.deadline_ms",
            doc(&[("limits", Some(r#"{"fuel":1,"memory_bytes":65536}"#))]),
            "manifest_missing_field",
            "manifest member limits.deadline_ms is missing",
        ),
        case(
            "tool a number",
            doc(&[("tool", Some("5"))]),
            "manifest_wrong_type",
            "manifest member tool must be a string",
        ),
        case(
            "version a number",
            doc(&[("version", Some("1"))]),
            "manifest_wrong_type",
            "manifest member version must be a string",
        ),
        case(
            "description null",
            doc(&[("description", Some("null"))]),
            "manifest_wrong_type",
            "manifest member description must be a string",
        ),
        case(
            "limits an array",
            doc(&[("limits", Some("[1,65536,1]"))]),
            "manifest_wrong_type",
            "manifest member limits must be a json object",
        ),
        case(
            "module_size a string",
            doc(&[("module_size", Some(r#""8""#))]),
            "manifest_wrong_type",
            "manifest member module_size must be an integer",
        ),
        case(
            "module_size true",
            doc(&[("module_size", Some("true"))]),
            "manifest_wrong_type",
            "manifest member module_size must be an integer",
        ),
        case(
            "fuel 1.5",
            doc(&[("limits", Some(&limits("1.5", "65536", "1")))]),
            "manifest_wrong_type",
            "manifest member limits.fuel must be an integer",
        ),
        // ---- values ----
        case(
            "tool uppercase",
            doc(&[("tool", Some(r#""Echo""#))]),
            "tool_invalid",
            "tool is not a valid tool name: must start with [a-z0-9]",
        ),
        case(
            "tool empty",
            doc(&[("tool", Some(r#""""#))]),
            "tool_invalid",
            "tool is not a valid tool name: empty",
        ),
        case(
            "tool starting with a dash",
            doc(&[("tool", Some(r#""-echo""#))]),
            "tool_invalid",
            "tool is not a valid tool name: must start with [a-z0-9]",
        ),
        case(
            "tool with a slash",
            doc(&[("tool", Some(r#""echo/x""#))]),
            "tool_invalid",
            "tool is not a valid tool name: must use only [a-z0-9._-]",
        ),
        case(
            "tool with a capital later",
            doc(&[("tool", Some(r#""ecHo""#))]),
            "tool_invalid",
            "tool is not a valid tool name: must use only [a-z0-9._-]",
        ),
        case(
            "tool of 65 characters",
            doc(&[("tool", Some(&format!("\"{}\"", "a".repeat(65))))]),
            "tool_invalid",
            "tool is not a valid tool name: longer than 64 characters",
        ),
        case(
            "version 1.0",
            doc(&[("version", Some(r#""1.0""#))]),
            "version_invalid",
            "version is not semver 2.0.0: the core must be exactly MAJOR.MINOR.PATCH",
        ),
        case(
            "version 01.0.0",
            doc(&[("version", Some(r#""01.0.0""#))]),
            "version_invalid",
            "version is not semver 2.0.0: a number has a leading zero",
        ),
        case(
            "module_sha256 uppercase",
            doc(&[(
                "module_sha256",
                Some(r#""93A44BBB96C751218E4C00D479E4C14358122A389ACCA16205B1E4D0DC5F9476""#),
            )]),
            "manifest_invalid_value",
            "manifest member module_sha256 is invalid: must be 64 lowercase hex digits",
        ),
        case(
            "module_sha256 of 62 digits",
            doc(&[(
                "module_sha256",
                Some(r#""93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f94""#),
            )]),
            "manifest_invalid_value",
            "manifest member module_sha256 is invalid: must be 64 lowercase hex digits",
        ),
        case(
            "module_size 0",
            doc(&[("module_size", Some("0"))]),
            "manifest_invalid_value",
            "manifest member module_size is invalid: must be at least 1",
        ),
        case(
            "module_size -1",
            doc(&[("module_size", Some("-1"))]),
            "manifest_invalid_value",
            "manifest member module_size is invalid: must be at least 1",
        ),
        case(
            "fuel 0",
            doc(&[("limits", Some(&limits("0", "65536", "1")))]),
            "manifest_invalid_value",
            "manifest member limits.fuel is invalid: must be at least 1",
        ),
        case(
            "deadline -5",
            doc(&[("limits", Some(&limits("1", "65536", "-5")))]),
            "manifest_invalid_value",
            "manifest member limits.deadline_ms is invalid: must be at least 1",
        ),
        case(
            "memory one byte short of a page",
            doc(&[("limits", Some(&limits("1", "65535", "1")))]),
            "manifest_invalid_value",
            "manifest member limits.memory_bytes is invalid: must be at least 65536",
        ),
        case(
            "memory not whole pages",
            doc(&[("limits", Some(&limits("1", "100000", "1")))]),
            "manifest_invalid_value",
            "manifest member limits.memory_bytes is invalid: must be a multiple of 65536 (whole webassembly pages)",
        ),
        case(
            "memory 2^53-1 (not whole pages)",
            doc(&[("limits", Some(&limits("1", max, "1")))]),
            "manifest_invalid_value",
            "manifest member limits.memory_bytes is invalid: must be a multiple of 65536 (whole webassembly pages)",
        ),
        case(
            "entrypoint starting with a digit",
            doc(&[("entrypoint", Some(r#""1run""#))]),
            "manifest_invalid_value",
            "manifest member entrypoint is invalid: must start with [A-Za-z_]",
        ),
        case(
            "entrypoint with a dash",
            doc(&[("entrypoint", Some(r#""run-it""#))]),
            "manifest_invalid_value",
            "manifest member entrypoint is invalid: must use only [A-Za-z0-9_]",
        ),
        case(
            "entrypoint empty",
            doc(&[("entrypoint", Some(r#""""#))]),
            "manifest_invalid_value",
            "manifest member entrypoint is invalid: empty",
        ),
        case(
            "entrypoint of 65 characters",
            doc(&[("entrypoint", Some(&format!("\"{}\"", "r".repeat(65))))]),
            "manifest_invalid_value",
            "manifest member entrypoint is invalid: longer than 64 characters",
        ),
        case(
            "description of 1025 characters",
            doc(&[("description", Some(&format!("\"{}\"", "é".repeat(1025))))]),
            "manifest_invalid_value",
            "manifest member description is invalid: longer than 1024 characters",
        ),
    ];
    for case in &cases {
        let err = Manifest::parse(&case.payload).unwrap_err();
        assert_eq!(err.reason(), case.reason, "case {}: {err}", case.name);
        assert_eq!(err.to_string(), case.message, "case {}", case.name);
    }
    println!("hostile manifest table: {} cases", cases.len());
}

#[test]
fn builder_refuses_what_parse_refuses() {
    let ok = limits_struct(1, 65_536, 1);
    let cases: [(&str, Result<Manifest, ReleaseError>, &str); 5] = [
        (
            "bad tool",
            Manifest::new("Echo", "1.0.0", "run", ok, "", b"m"),
            "tool_invalid",
        ),
        (
            "bad version",
            Manifest::new("echo", "1.0", "run", ok, "", b"m"),
            "version_invalid",
        ),
        (
            "bad entrypoint",
            Manifest::new("echo", "1.0.0", "", ok, "", b"m"),
            "manifest_invalid_value",
        ),
        (
            "empty module",
            Manifest::new("echo", "1.0.0", "run", ok, "", b""),
            "manifest_invalid_value",
        ),
        (
            "fuel 2^53",
            Manifest::new(
                "echo",
                "1.0.0",
                "run",
                limits_struct(1 << 53, 65_536, 1),
                "",
                b"m",
            ),
            "manifest_number_out_of_range",
        ),
    ];
    for (name, got, reason) in cases {
        assert_eq!(got.unwrap_err().reason(), reason, "{name}");
    }
    // from_value refuses non-objects and unknown members just the same.
    assert_eq!(
        Manifest::from_value(&json!("echo")).unwrap_err().reason(),
        "manifest_wrong_type"
    );
}

fn limits_struct(fuel: u64, memory_bytes: u64, deadline_ms: u64) -> Limits {
    Limits {
        fuel,
        memory_bytes,
        deadline_ms,
    }
}
