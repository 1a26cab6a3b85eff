#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The capsule bundle: the example in the repository round-trips and
//! digests, every hostile bundle is refused with its own reason and member
//! path, and run inputs are checked against the input schema naming the field.

mod common;

use serde_json::{Value, json};
use soma_capsule::{Bundle, BundleError, ToolRef};
use soma_release::Version;
use soma_sign::sha256;

/// `sha256sum crates/capsule/bundles/text-stats.capsule.json`.
const EXAMPLE_DIGEST: &str = "04fb0cd58119ece50874f33c04cce0338074401beee1cb361dd05d5f14502475";

/// SHA-256 of `crates/sandbox/adapters/text_stats.wat` compiled by `wat`.
const TEXT_STATS_SHA256: &str = "7531620042b73293cbe39a8d7635cb3c3b3185cf43fcd0e4dae41faea79ed3a2";

#[test]
fn example_bundle_round_trips_and_digests() {
    let bytes = common::example_bundle_bytes();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.canonical_bytes(), &bytes[..]);
    assert_eq!(bundle.digest(), sha256(&bytes));
    assert_eq!(bundle.digest_hex(), EXAMPLE_DIGEST);
    assert_eq!(bundle.name(), "text-stats");
    assert_eq!(bundle.version().as_str(), "1.0.0");
    assert_eq!(bundle.subject_name(), "text-stats@1.0.0");
    assert!(bundle.description().starts_with("Counts the characters"));
    assert!(bundle.parameters().is_empty());
    assert_eq!(bundle.input_schema()["required"], json!(["text"]));

    // The tool it pins is the repository's text_stats adapter, byte for byte.
    let [tool] = bundle.tools() else {
        panic!("one tool expected: {:?}", bundle.tools())
    };
    assert_eq!(tool.tool, "text-stats");
    assert_eq!(tool.version, Version::parse("1.0.0").unwrap());
    assert_eq!(common::to_hex(&tool.module_sha256), TEXT_STATS_SHA256);
    assert_eq!(sha256(&common::text_stats_module()), tool.module_sha256);

    // Built from its parts, and from a JSON value with numbers as doubles
    // (as a protobuf Struct carries them), it is the same bundle.
    let built = Bundle::new(
        bundle.name(),
        "1.0.0",
        bundle.description(),
        bundle.tools(),
        Value::Object(bundle.input_schema().clone()),
        json!({}),
    )
    .unwrap();
    assert_eq!(built, bundle);
    let mut value: Value = serde_json::from_slice(&bytes).unwrap();
    value["input_schema"]["properties"]["text"]["maxLength"] = json!(65536.0);
    assert_eq!(Bundle::from_value(&value).unwrap(), bundle);

    // The example accepts what text-stats counts and refuses the rest by name.
    bundle.check_input(&json!({"text": "hello wide world"})).unwrap();
    let err = bundle
        .check_input(&json!({"text": "x", "lang": "en"}))
        .unwrap_err();
    assert_eq!((err.reason(), err.path()), ("input_unknown_field", "input.lang"));
    let err = bundle.check_input(&json!({})).unwrap_err();
    assert_eq!((err.reason(), err.path()), ("input_missing_field", "input.text"));
}

#[test]
fn bundles_that_are_accepted() {
    let sha = [7u8; 32];
    let tool = |name: &str, version: &str| ToolRef {
        tool: name.to_owned(),
        version: Version::parse(version).unwrap(),
        module_sha256: sha,
    };
    let schema = json!({"type": "object"});
    // Two versions of one tool, and sixteen tools: the limit itself.
    let two = [tool("summarise", "1.0.0"), tool("summarise", "1.0.1")];
    Bundle::new(
        "a",
        "0.1.0-rc.1+b.2",
        "",
        &two,
        schema.clone(),
        json!({"k": [1, 2.5]}),
    )
    .unwrap();
    let sixteen: Vec<ToolRef> = (0..16).map(|i| tool(&format!("t{i}"), "1.0.0")).collect();
    let bundle = Bundle::new(
        &"n".repeat(64),
        "1.0.0",
        &"é".repeat(1024),
        &sixteen,
        schema,
        json!({}),
    )
    .unwrap();
    assert_eq!(bundle.tools().len(), 16);
    // What `new` builds, `parse` accepts from its canonical bytes.
    assert_eq!(Bundle::parse(bundle.canonical_bytes()).unwrap(), bundle);
}

/// The members of the example bundle as raw JSON text, in canonical order.
fn base_members() -> Vec<(String, String)> {
    [
        ("description", r#""Counts.""#.to_owned()),
        ("input_schema", schema(r#"{"text":{"type":"string"}}"#)),
        ("name", r#""text-stats""#.to_owned()),
        ("parameters", "{}".to_owned()),
        ("tools", format!("[{}]", tool_entry("text-stats", "1.0.0"))),
        ("version", r#""1.0.0""#.to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect()
}

fn schema(properties: &str) -> String {
    format!(r#"{{"properties":{properties},"type":"object"}}"#)
}

fn tool_entry(tool: &str, version: &str) -> String {
    format!(r#"{{"module_sha256":"{TEXT_STATS_SHA256}","tool":"{tool}","version":"{version}"}}"#)
}

/// The base bundle with members replaced (`Some`), removed (`None`) or,
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
    input: Vec<u8>,
    /// The reason, and the member path the refusal names (if any).
    expected: (&'static str, Option<&'static str>),
}

fn case(
    name: &'static str,
    input: impl Into<Vec<u8>>,
    reason: &'static str,
    path: Option<&'static str>,
) -> Case {
    Case {
        name,
        input: input.into(),
        expected: (reason, path),
    }
}

fn with(member: &'static str, raw: &str) -> String {
    doc(&[(member, Some(raw))])
}

fn with_schema(properties: &str) -> String {
    with("input_schema", &schema(properties))
}

#[test]
fn the_base_document_is_valid_and_canonical() {
    Bundle::parse(doc(&[]).as_bytes()).unwrap();
}

#[test]
fn hostile_bundles_each_refused_with_its_reason() {
    let two_tools = |a: &str, b: &str| {
        format!(
            "[{},{}]",
            tool_entry("text-stats", a),
            tool_entry("text-stats", b)
        )
    };
    let seventeen = format!(
        "[{}]",
        (0..17)
            .map(|i| tool_entry(&format!("t{i:02}"), "1.0.0"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let base = doc(&[]);
    let cases = vec![
        // ---- JSON and canonical form ----
        case("truncated", &base[..base.len() - 1], "bundle_invalid_json", None),
        case(
            "trailing comma",
            base.replace("{}", "{,}"),
            "bundle_invalid_json",
            None,
        ),
        case(
            "invalid utf-8",
            [base.as_bytes(), b"\xff"].concat(),
            "bundle_invalid_json",
            None,
        ),
        case(
            "lone surrogate",
            with("description", r#""\ud800""#),
            "bundle_invalid_json",
            None,
        ),
        case("not json at all", "text-stats 1.0.0", "bundle_invalid_json", None),
        case(
            "duplicate top-level member",
            base.replacen(
                r#""name":"text-stats""#,
                r#""name":"text-stats","name":"evil""#,
                1,
            ),
            "bundle_duplicate_key",
            None,
        ),
        case(
            "duplicate member in the schema",
            with_schema(r#"{"text":{"type":"string","type":"integer"}}"#),
            "bundle_duplicate_key",
            None,
        ),
        case(
            "whitespace",
            base.replace(":", ": "),
            "bundle_not_canonical",
            None,
        ),
        case(
            "trailing newline",
            format!("{base}\n"),
            "bundle_not_canonical",
            None,
        ),
        case(
            "members out of order",
            base.replacen(r#""parameters":{},"#, "", 1)
                .replacen('{', r#"{"parameters":{},"#, 1),
            "bundle_not_canonical",
            None,
        ),
        case(
            "escaped character",
            with("description", r#""Co\u0075nts.""#),
            "bundle_not_canonical",
            None,
        ),
        case(
            "number not in shortest form",
            with("parameters", r#"{"k":1.50}"#),
            "bundle_not_canonical",
            None,
        ),
        case(
            "integer beyond 2^53",
            with("parameters", r#"{"k":9007199254740993}"#),
            "bundle_number_out_of_range",
            Some("parameters.k"),
        ),
        case(
            "number overflowing a double",
            with("parameters", r#"{"k":1e400}"#),
            "bundle_number_out_of_range",
            Some("byte 136"),
        ),
        // ---- members ----
        case("top level is an array", "[]", "bundle_wrong_type", Some("bundle")),
        case(
            "name missing",
            doc(&[("name", None)]),
            "bundle_missing_field",
            Some("name"),
        ),
        case(
            "version missing",
            doc(&[("version", None)]),
            "bundle_missing_field",
            Some("version"),
        ),
        case(
            "description missing",
            doc(&[("description", None)]),
            "bundle_missing_field",
            Some("description"),
        ),
        case(
            "tools missing",
            doc(&[("tools", None)]),
            "bundle_missing_field",
            Some("tools"),
        ),
        case(
            "input_schema missing",
            doc(&[("input_schema", None)]),
            "bundle_missing_field",
            Some("input_schema"),
        ),
        case(
            "parameters missing",
            doc(&[("parameters", None)]),
            "bundle_missing_field",
            Some("parameters"),
        ),
        case(
            "unknown member",
            doc(&[("zauthor", Some(r#""mallory""#))]),
            "bundle_unknown_field",
            Some("zauthor"),
        ),
        case(
            "tool entry module_sha256 missing",
            with("tools", r#"[{"tool":"text-stats","version":"1.0.0"}]"#),
            "bundle_missing_field",
            Some("tools[0].module_sha256"),
        ),
        case(
            "tool entry with an unknown member",
            with(
                "tools",
                &format!(
                    "[{}]",
                    tool_entry("text-stats", "1.0.0").replacen('{', r#"{"entrypoint":"run","#, 1)
                ),
            ),
            "bundle_unknown_field",
            Some("tools[0].entrypoint"),
        ),
        case(
            "name a number",
            with("name", "7"),
            "bundle_wrong_type",
            Some("name"),
        ),
        case(
            "description null",
            with("description", "null"),
            "bundle_wrong_type",
            Some("description"),
        ),
        case(
            "version a number",
            with("version", "1"),
            "bundle_wrong_type",
            Some("version"),
        ),
        case(
            "tools an object",
            with("tools", "{}"),
            "bundle_wrong_type",
            Some("tools"),
        ),
        case(
            "tool entry a string",
            with("tools", r#"["text-stats@1.0.0"]"#),
            "bundle_wrong_type",
            Some("tools[0]"),
        ),
        case(
            "input_schema an array",
            with("input_schema", "[]"),
            "bundle_wrong_type",
            Some("input_schema"),
        ),
        case(
            "parameters a string",
            with("parameters", r#""{}""#),
            "bundle_wrong_type",
            Some("parameters"),
        ),
        case(
            "tool module_sha256 a number",
            with(
                "tools",
                r#"[{"module_sha256":1,"tool":"text-stats","version":"1.0.0"}]"#,
            ),
            "bundle_wrong_type",
            Some("tools[0].module_sha256"),
        ),
        // ---- values ----
        case(
            "name empty",
            with("name", r#""""#),
            "bundle_invalid_value",
            Some("name"),
        ),
        case(
            "name uppercase",
            with("name", r#""Text-Stats""#),
            "bundle_invalid_value",
            Some("name"),
        ),
        case(
            "name starts with a dot",
            with("name", r#"".text""#),
            "bundle_invalid_value",
            Some("name"),
        ),
        case(
            "name with a slash",
            with("name", r#""text/stats""#),
            "bundle_invalid_value",
            Some("name"),
        ),
        case(
            "name of 65 characters",
            with("name", &format!("\"{}\"", "a".repeat(65))),
            "bundle_invalid_value",
            Some("name"),
        ),
        case(
            "description of 1025 characters",
            with("description", &format!("\"{}\"", "é".repeat(1025))),
            "bundle_invalid_value",
            Some("description"),
        ),
        case(
            "no tools",
            with("tools", "[]"),
            "bundle_invalid_value",
            Some("tools"),
        ),
        case(
            "seventeen tools",
            with("tools", &seventeen),
            "bundle_invalid_value",
            Some("tools"),
        ),
        case(
            "tool name invalid",
            with("tools", &format!("[{}]", tool_entry("Text_Stats", "1.0.0"))),
            "bundle_invalid_value",
            Some("tools[0].tool"),
        ),
        case(
            "module_sha256 uppercase",
            with(
                "tools",
                &format!("[{}]", tool_entry("text-stats", "1.0.0")).replace("7531", "7A31"),
            ),
            "bundle_invalid_value",
            Some("tools[0].module_sha256"),
        ),
        case(
            "module_sha256 short",
            with(
                "tools",
                &format!("[{}]", tool_entry("text-stats", "1.0.0")).replace("7531", "75"),
            ),
            "bundle_invalid_value",
            Some("tools[0].module_sha256"),
        ),
        case(
            "version without patch",
            with("version", r#""1.0""#),
            "version_invalid",
            Some("version"),
        ),
        case(
            "version with a leading zero",
            with("version", r#""01.0.0""#),
            "version_invalid",
            Some("version"),
        ),
        case(
            "tool version with an empty pre-release",
            with("tools", &format!("[{}]", tool_entry("text-stats", "1.0.0-"))),
            "version_invalid",
            Some("tools[0].version"),
        ),
        case(
            "the same tool@version twice",
            with("tools", &two_tools("1.0.0", "1.0.0")),
            "bundle_duplicate_tool",
            Some("tools[1]"),
        ),
        case(
            "the same release with other build metadata",
            with("tools", &two_tools("1.0.0+a", "1.0.0+b")),
            "bundle_duplicate_tool",
            Some("tools[1]"),
        ),
        // ---- the input schema: constructs outside the subset ----
        case(
            "pattern",
            with_schema(r#"{"text":{"pattern":"^a","type":"string"}}"#),
            "input_schema_unsupported",
            Some("input_schema.properties.text.pattern"),
        ),
        case(
            "$ref",
            with_schema(r##"{"text":{"$ref":"#/defs/t"}}"##),
            "input_schema_unsupported",
            Some("input_schema.properties.text.$ref"),
        ),
        case(
            "oneOf at the root",
            with("input_schema", r#"{"oneOf":[],"type":"object"}"#),
            "input_schema_unsupported",
            Some("input_schema.oneOf"),
        ),
        case(
            "minLength",
            with_schema(r#"{"text":{"minLength":1,"type":"string"}}"#),
            "input_schema_unsupported",
            Some("input_schema.properties.text.minLength"),
        ),
        case(
            "a list of types",
            with_schema(r#"{"text":{"type":["string","null"]}}"#),
            "input_schema_unsupported",
            Some("input_schema.properties.text.type"),
        ),
        case(
            "type null",
            with_schema(r#"{"text":{"type":"null"}}"#),
            "input_schema_unsupported",
            Some("input_schema.properties.text.type"),
        ),
        case(
            "a schema without type",
            with_schema(r#"{"text":{}}"#),
            "input_schema_unsupported",
            Some("input_schema.properties.text.type"),
        ),
        case(
            "additionalProperties as a schema",
            with(
                "input_schema",
                r#"{"additionalProperties":{"type":"string"},"type":"object"}"#,
            ),
            "input_schema_unsupported",
            Some("input_schema.additionalProperties"),
        ),
        case(
            "$schema below the root",
            with_schema(r#"{"text":{"$schema":"x","type":"string"}}"#),
            "input_schema_unsupported",
            Some("input_schema.properties.text.$schema"),
        ),
        case(
            "unsupported construct deep in items",
            with_schema(r#"{"tags":{"items":{"format":"email","type":"string"},"type":"array"}}"#),
            "input_schema_unsupported",
            Some("input_schema.properties.tags.items.format"),
        ),
        // ---- the input schema: supported keywords with impossible values ----
        case(
            "root not an object schema",
            with("input_schema", r#"{"type":"string"}"#),
            "input_schema_invalid",
            Some("input_schema.type"),
        ),
        case(
            "negative maxLength",
            with_schema(r#"{"text":{"maxLength":-1,"type":"string"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.text.maxLength"),
        ),
        case(
            "fractional maxLength",
            with_schema(r#"{"text":{"maxLength":1.5,"type":"string"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.text.maxLength"),
        ),
        case(
            "maxLength on an integer",
            with_schema(r#"{"n":{"maxLength":3,"type":"integer"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.n.maxLength"),
        ),
        case(
            "minimum above maximum",
            with_schema(r#"{"n":{"maximum":1,"minimum":2,"type":"number"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.n.minimum"),
        ),
        case(
            "minimum a string",
            with_schema(r#"{"n":{"minimum":"0","type":"number"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.n.minimum"),
        ),
        case(
            "empty enum",
            with_schema(r#"{"m":{"enum":[],"type":"string"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.m.enum"),
        ),
        case(
            "enum value twice (1 and 1.0)",
            with_schema(r#"{"m":{"enum":[1,1.0],"type":"integer"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.m.enum"),
        ),
        case(
            "enum value of another type",
            with_schema(r#"{"m":{"enum":["a",1],"type":"string"}}"#),
            "input_schema_invalid",
            Some("input_schema.properties.m.enum"),
        ),
        case(
            "required names no property",
            with(
                "input_schema",
                r#"{"properties":{},"required":["text"],"type":"object"}"#,
            ),
            "input_schema_invalid",
            Some("input_schema.required"),
        ),
        case(
            "required lists a name twice",
            with(
                "input_schema",
                r#"{"properties":{"text":{"type":"string"}},"required":["text","text"],"type":"object"}"#,
            ),
            "input_schema_invalid",
            Some("input_schema.required"),
        ),
        case(
            "additionalProperties a string",
            with("input_schema", r#"{"additionalProperties":"no","type":"object"}"#),
            "input_schema_invalid",
            Some("input_schema.additionalProperties"),
        ),
        case(
            "properties an array",
            with("input_schema", r#"{"properties":[],"type":"object"}"#),
            "input_schema_invalid",
            Some("input_schema.properties"),
        ),
        case(
            "a property schema that is not an object",
            with_schema(r#"{"text":"string"}"#),
            "bundle_wrong_type",
            Some("input_schema.properties.text"),
        ),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        match Bundle::parse(&case.input) {
            Ok(_) => failures.push(format!("{}: accepted", case.name)),
            Err(e) => {
                let got = (e.reason(), e.path());
                if got != case.expected {
                    failures.push(format!(
                        "{}: got {got:?} ({e}), expected {:?}",
                        case.name, case.expected
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn messages_name_the_path_and_never_the_value() {
    let err = Bundle::parse(with("name", r#""SECRET-Name""#).as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bundle member name is invalid: must start with [a-z0-9]"
    );
    let err = Bundle::parse(with_schema(r#"{"text":{"pattern":"SECRET","type":"string"}}"#).as_bytes())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "input schema construct at input_schema.properties.text.pattern is not supported: keyword outside the supported subset"
    );
    assert!(matches!(err, BundleError::InputSchemaUnsupported { .. }));
}

/// A schema using every supported construct, nested.
fn rich_bundle() -> Bundle {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "title": "Run input",
        "additionalProperties": false,
        "required": ["text", "options"],
        "properties": {
            "text": {"type": "string", "maxLength": 8, "description": "At most eight characters."},
            "count": {"type": "integer", "minimum": 1, "maximum": 10},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "verbose": {"type": "boolean"},
            "mode": {"type": "string", "enum": ["fast", "exact"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
            "anything": {"type": "array"},
            "options": {
                "type": "object",
                "additionalProperties": false,
                "required": ["level"],
                "properties": {
                    "level": {"type": "integer", "enum": [1, 2, 3]},
                    "extra": {"type": "object"},
                },
            },
        },
    });
    let tools = [ToolRef {
        tool: "summarise".to_owned(),
        version: Version::parse("2.0.0").unwrap(),
        module_sha256: [1; 32],
    }];
    Bundle::new(
        "rich",
        "1.0.0",
        "Every schema construct.",
        &tools,
        schema,
        json!({"mode": "fast"}),
    )
    .unwrap()
}

struct InputCase {
    name: &'static str,
    input: Value,
    /// `None`: accepted; else the reason and the path named.
    expected: Option<(&'static str, &'static str)>,
}

fn input(name: &'static str, input: Value, expected: Option<(&'static str, &'static str)>) -> InputCase {
    InputCase {
        name,
        input,
        expected,
    }
}

#[test]
fn check_input_names_the_field() {
    let bundle = rich_bundle();
    let ok = |v: Value| v;
    let cases = vec![
        input(
            "minimal",
            ok(json!({"text": "abc", "options": {"level": 2}})),
            None,
        ),
        input(
            "everything",
            json!({"text": "ñññññññ🚀", "count": 10, "ratio": 0.5, "verbose": true, "mode": "exact",
                   "tags": ["a", "bcd"], "anything": [1, "x", null], "options": {"level": 3.0, "extra": {"k": 1}}}),
            None,
        ),
        input(
            "integer spelled 5.0",
            json!({"text": "", "count": 5.0, "options": {"level": 1}}),
            None,
        ),
        input(
            "not an object",
            json!(["text"]),
            Some(("input_wrong_type", "input")),
        ),
        input(
            "missing required",
            json!({"options": {"level": 1}}),
            Some(("input_missing_field", "input.text")),
        ),
        input(
            "missing nested required",
            json!({"text": "a", "options": {}}),
            Some(("input_missing_field", "input.options.level")),
        ),
        input(
            "wrong type string",
            json!({"text": 5, "options": {"level": 1}}),
            Some(("input_wrong_type", "input.text")),
        ),
        input(
            "wrong type integer (a fraction)",
            json!({"text": "a", "count": 2.5, "options": {"level": 1}}),
            Some(("input_wrong_type", "input.count")),
        ),
        input(
            "wrong type integer (a string)",
            json!({"text": "a", "count": "2", "options": {"level": 1}}),
            Some(("input_wrong_type", "input.count")),
        ),
        input(
            "wrong type number",
            json!({"text": "a", "ratio": true, "options": {"level": 1}}),
            Some(("input_wrong_type", "input.ratio")),
        ),
        input(
            "wrong type boolean",
            json!({"text": "a", "verbose": "yes", "options": {"level": 1}}),
            Some(("input_wrong_type", "input.verbose")),
        ),
        input(
            "wrong type array",
            json!({"text": "a", "tags": "a,b", "options": {"level": 1}}),
            Some(("input_wrong_type", "input.tags")),
        ),
        input(
            "wrong type object",
            json!({"text": "a", "options": [1]}),
            Some(("input_wrong_type", "input.options")),
        ),
        input(
            "wrong type nested",
            json!({"text": "a", "options": {"level": "2"}}),
            Some(("input_wrong_type", "input.options.level")),
        ),
        input(
            "unknown property",
            json!({"text": "a", "options": {"level": 1}, "zzz": 1}),
            Some(("input_unknown_field", "input.zzz")),
        ),
        input(
            "unknown nested property",
            json!({"text": "a", "options": {"level": 1, "debug": true}}),
            Some(("input_unknown_field", "input.options.debug")),
        ),
        input(
            "maxLength in code points",
            json!({"text": "ñññññññññ", "options": {"level": 1}}),
            Some(("input_too_long", "input.text")),
        ),
        input(
            "maxLength in array items",
            json!({"text": "a", "tags": ["ok", "toolong"], "options": {"level": 1}}),
            Some(("input_too_long", "input.tags[1]")),
        ),
        input(
            "enum",
            json!({"text": "a", "mode": "slow", "options": {"level": 1}}),
            Some(("input_not_in_enum", "input.mode")),
        ),
        input(
            "nested enum",
            json!({"text": "a", "options": {"level": 4}}),
            Some(("input_not_in_enum", "input.options.level")),
        ),
        input(
            "below minimum",
            json!({"text": "a", "count": 0, "options": {"level": 1}}),
            Some(("input_below_minimum", "input.count")),
        ),
        input(
            "above maximum",
            json!({"text": "a", "ratio": 1.0001, "options": {"level": 1}}),
            Some(("input_above_maximum", "input.ratio")),
        ),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let got = bundle.check_input(&case.input).err();
        let got_pair = got.as_ref().map(|e| (e.reason(), e.path()));
        if got_pair != case.expected {
            failures.push(format!(
                "{}: got {got:?}, expected {:?}",
                case.name, case.expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    let err = bundle
        .check_input(&json!({"text": "a", "options": {"level": 9}}))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "input.options.level is not one of the allowed values"
    );
    let err = bundle
        .check_input(&json!({"text": "a", "count": 11, "options": {"level": 1}}))
        .unwrap_err();
    assert_eq!(err.to_string(), "input.count is above the maximum 10");
}
