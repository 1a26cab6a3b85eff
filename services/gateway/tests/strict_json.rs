//! Strict JSON at the edge (RFC 7493 I-JSON §2.3), through the real route
//! table and descriptors: an object that names a member twice, at any depth,
//! and an object that names one protobuf field by both its spellings, at any
//! message depth, are refused with their reasons; what only looks alike is
//! accepted; and a body without duplicates parses exactly as serde_json
//! parses it.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use http::Method;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, MessageOptions};
use serde_json::{Value, json};
use soma_gateway::routes::{RouteMatch, RouteTable};
use soma_gateway::transcode::{self, TranscodeError};

/// The edge's default depth limit (`max_json_depth`), checked first as the
/// edge does.
const MAX_DEPTH: usize = 64;

/// What a body is decoded into.
#[derive(Clone, Copy)]
enum Target {
    /// The request message of the route that answers this method and path.
    Route(&'static str, &'static str),
    /// A message of the descriptor set that no route takes as a whole but
    /// that shapes part of one (repeated messages with two-spelling fields).
    Message(&'static str),
    /// `test.Outer`: a map whose values are messages with two-spelling
    /// fields (no SomaStack message has one; see [`map_of_messages`]).
    MapOfMessages,
}

enum Expect {
    Accepted,
    /// Refused with this reason and exactly this message.
    Refused(&'static str, String),
}

struct Case {
    name: &'static str,
    target: Target,
    body: String,
    expected: Expect,
}

fn case(name: &'static str, target: Target, body: &str, expected: Expect) -> Case {
    Case {
        name,
        target,
        body: body.to_owned(),
        expected,
    }
}

fn dup_key(key: &str, pointer: &str) -> Expect {
    Expect::Refused(
        "duplicate_json_key",
        format!("duplicate member name {key} in the object at JSON pointer {pointer}"),
    )
}

fn dup_field(at: &str, json_name: &str, proto_name: &str) -> Expect {
    Expect::Refused(
        "duplicate_field",
        format!("{at}: \"{json_name}\" and \"{proto_name}\" are two spellings of one field; send one"),
    )
}

fn descriptor(target: Target) -> MessageDescriptor {
    match target {
        Target::Route(method, path) => {
            let table = RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).expect("route table builds");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            match table.find(&method, path) {
                RouteMatch::Found { route, .. } => route.method.input(),
                _ => panic!("no route for {method} {path}"),
            }
        }
        Target::Message(name) => soma_proto::descriptor_pool()
            .unwrap()
            .get_message_by_name(name)
            .unwrap_or_else(|| panic!("no {name}")),
        Target::MapOfMessages => map_of_messages(),
    }
}

/// `message Outer { map<string, Inner> items = 1; }` with
/// `message Inner { string event_id = 1; }`, built as protoc would describe
/// it (JSON names computed by the pool).
fn map_of_messages() -> MessageDescriptor {
    let field =
        |name: &str, number: i32, label: Label, kind: Type, type_name: Option<&str>| FieldDescriptorProto {
            name: Some(name.to_owned()),
            number: Some(number),
            label: Some(label as i32),
            r#type: Some(kind as i32),
            type_name: type_name.map(str::to_owned),
            ..Default::default()
        };
    let entry = DescriptorProto {
        name: Some("ItemsEntry".to_owned()),
        field: vec![
            field("key", 1, Label::Optional, Type::String, None),
            field("value", 2, Label::Optional, Type::Message, Some(".test.Inner")),
        ],
        options: Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let outer = DescriptorProto {
        name: Some("Outer".to_owned()),
        field: vec![field(
            "items",
            1,
            Label::Repeated,
            Type::Message,
            Some(".test.Outer.ItemsEntry"),
        )],
        nested_type: vec![entry],
        ..Default::default()
    };
    let inner = DescriptorProto {
        name: Some("Inner".to_owned()),
        field: vec![field("event_id", 1, Label::Optional, Type::String, None)],
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("test/map.proto".to_owned()),
        package: Some("test".to_owned()),
        message_type: vec![outer, inner],
        syntax: Some("proto3".to_owned()),
        ..Default::default()
    };
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_proto(file).unwrap();
    pool.get_message_by_name("test.Outer").unwrap()
}

/// The edge's steps 4 and 6 for a body: depth, syntax, then the message.
fn transcode_body(target: Target, body: &[u8]) -> Result<(), TranscodeError> {
    transcode::check_depth(body, MAX_DEPTH)?;
    let value = transcode::parse_json(body)?;
    transcode::json_to_message(&descriptor(target), &value).map(|_| ())
}

#[test]
fn duplicate_names_and_two_spellings_are_refused_naming_the_key_and_where() {
    const RUNS: Target = Target::Route("POST", "/v1/capsule-runs");
    const DRILLS: Target = Target::Route("POST", "/v1/drills/disaster");
    const SUBMIT: Target = Target::Route("POST", "/v1/submissions");
    const RUN_CAPSULE: Target = Target::Route("POST", "/v1/capsules/cap-1:run");
    const EXECUTE: Target = Target::Route("POST", "/v1/tools/pdf-reader:execute");
    const KEYS: Target = Target::Message("somastack.v1.ListVerificationKeysResponse");
    const MAP: Target = Target::MapOfMessages;
    let long = "k".repeat(200);
    let cases = vec![
        // --- one member name twice (duplicate_json_key) ---
        case(
            "top level",
            RUNS,
            r#"{"eventId":"a","capsuleId":"c","eventId":"b"}"#,
            dup_key(r#""eventId""#, r#""""#),
        ),
        case(
            "same value twice is still two members",
            RUNS,
            r#"{"eventId":"a","eventId":"a"}"#,
            dup_key(r#""eventId""#, r#""""#),
        ),
        case(
            "a null first, a value second",
            RUNS,
            r#"{"eventId":null,"eventId":"a"}"#,
            dup_key(r#""eventId""#, r#""""#),
        ),
        case(
            "unknown field twice: the duplicate is found while parsing",
            RUNS,
            r#"{"bogus":1,"bogus":2}"#,
            dup_key(r#""bogus""#, r#""""#),
        ),
        case(
            "nested object (a message field)",
            SUBMIT,
            r#"{"capsule":"c","attestation":{"payloadType":"x","payload":"","payloadType":"y"}}"#,
            dup_key(r#""payloadType""#, r#""/attestation""#),
        ),
        case(
            "object inside an array (repeated message)",
            DRILLS,
            r#"{"eventId":"d","steps":[{"name":"a"},{"name":"b","detail":"x","name":"c"}]}"#,
            dup_key(r#""name""#, r#""/steps/1""#),
        ),
        case(
            "google.protobuf.Struct field",
            RUN_CAPSULE,
            r#"{"input":{"prompt":"hello","prompt":"card 4111111111111111"}}"#,
            dup_key(r#""prompt""#, r#""/input""#),
        ),
        case(
            "google.protobuf.Value inside a Struct's list",
            EXECUTE,
            r#"{"input":{"rows":[1,{"cell":{"k":1,"v":2,"k":3}}]}}"#,
            dup_key(r#""k""#, r#""/input/rows/1/cell""#),
        ),
        case(
            "escaped-equal keys at the top level",
            RUNS,
            r#"{"eventId":"a","event\u0049d":"b"}"#,
            dup_key(r#""eventId""#, r#""""#),
        ),
        case(
            "escaped-equal keys in a Struct",
            RUN_CAPSULE,
            r#"{"input":{"\u0061":1,"a":2}}"#,
            dup_key(r#""a""#, r#""/input""#),
        ),
        case(
            "escaped-equal non-ASCII keys (surrogate pair and UTF-8)",
            RUN_CAPSULE,
            r#"{"input":{"😀":1,"\ud83d\ude00":2}}"#,
            dup_key(r#""😀""#, r#""/input""#),
        ),
        case(
            "the empty name twice",
            RUN_CAPSULE,
            r#"{"input":{"":1,"":2}}"#,
            dup_key(r#""""#, r#""/input""#),
        ),
        case(
            "pointer escapes ~ and / (RFC 6901)",
            RUN_CAPSULE,
            r#"{"input":{"a/b":{"~x":{"q":1,"q":2}}}}"#,
            dup_key(r#""q""#, r#""/input/a~1b/~0x""#),
        ),
        case(
            "a body that is an array",
            RUNS,
            r#"[{"a":1},{"a":1,"a":2}]"#,
            dup_key(r#""a""#, r#""/1""#),
        ),
        case(
            "a long name is quoted only in part",
            RUN_CAPSULE,
            &format!(r#"{{"input":{{"{long}":1,"{long}":2}}}}"#),
            dup_key(&format!("\"{}\"…", "k".repeat(128)), r#""/input""#),
        ),
        case(
            "serde_json's private raw-value name is an ordinary (unknown) name",
            RUNS,
            r#"{"$serde_json::private::RawValue":"{\"eventId\":\"a\",\"eventId\":\"b\"}"}"#,
            Expect::Refused(
                "invalid_argument",
                "$serde_json::private::RawValue: unknown field of somastack.v1.RecordCapsuleRunRequest"
                    .to_owned(),
            ),
        ),
        // --- one field by both spellings (duplicate_field) ---
        case(
            "eventId and event_id at the top level",
            RUNS,
            r#"{"eventId":"a","event_id":"b"}"#,
            dup_field("(body)", "eventId", "event_id"),
        ),
        case(
            "event_id first",
            RUNS,
            r#"{"event_id":"b","capsuleId":"c","eventId":"a"}"#,
            dup_field("(body)", "eventId", "event_id"),
        ),
        case(
            "one spelling null",
            RUNS,
            r#"{"eventId":"a","event_id":null}"#,
            dup_field("(body)", "eventId", "event_id"),
        ),
        case(
            "one spelling with a wrong type: the two spellings are named first",
            RUNS,
            r#"{"event_id":7,"eventId":"a"}"#,
            dup_field("(body)", "eventId", "event_id"),
        ),
        case(
            "both spellings, the JSON-name one mistyped: refused, for the type (it is read first)",
            RUNS,
            r#"{"eventId":7,"event_id":"a"}"#,
            Expect::Refused(
                "invalid_argument",
                "eventId: expected a string, got a number".to_owned(),
            ),
        ),
        case(
            "a well-known type field by both spellings",
            DRILLS,
            r#"{"startedAt":"2026-01-01T00:00:00Z","started_at":"2026-01-02T00:00:00Z"}"#,
            dup_field("(body)", "startedAt", "started_at"),
        ),
        case(
            "escaped proto name",
            RUNS,
            r#"{"eventId":"a","event\u005fid":"b"}"#,
            dup_field("(body)", "eventId", "event_id"),
        ),
        case(
            "nested message",
            SUBMIT,
            r#"{"capsule":"c","attestation":{"payloadType":"a","payload_type":"b"}}"#,
            dup_field("attestation", "payloadType", "payload_type"),
        ),
        case(
            "nested message by its proto name",
            SUBMIT,
            r#"{"attestation":{"payload_type":"a","payloadType":"b"}}"#,
            dup_field("attestation", "payloadType", "payload_type"),
        ),
        case(
            "repeated messages",
            KEYS,
            r#"{"keys":[{"keyId":"k"},{"publicKeyPem":"p","public_key_pem":"q"}]}"#,
            dup_field("keys[1]", "publicKeyPem", "public_key_pem"),
        ),
        case(
            "map values that are messages",
            MAP,
            r#"{"items":{"x":{"eventId":"a"},"y":{"eventId":"a","event_id":"b"}}}"#,
            dup_field("items.y", "eventId", "event_id"),
        ),
        // --- what only looks alike is accepted ---
        case(
            "the same name in sibling objects",
            DRILLS,
            r#"{"eventId":"d","steps":[{"name":"a","detail":"x"},{"name":"b","detail":"x"}]}"#,
            Expect::Accepted,
        ),
        case(
            "a name equal to another member's value",
            RUNS,
            r#"{"eventId":"capsuleId","capsuleId":"eventId"}"#,
            Expect::Accepted,
        ),
        case(
            "the same name at different depths",
            RUN_CAPSULE,
            r#"{"input":{"input":{"input":1}}}"#,
            Expect::Accepted,
        ),
        case(
            "names that differ only in case",
            RUN_CAPSULE,
            r#"{"input":{"a":1,"A":2}}"#,
            Expect::Accepted,
        ),
        case(
            "a literal backslash-u is not an escape",
            RUN_CAPSULE,
            r#"{"input":{"\\u0061":1,"a":2}}"#,
            Expect::Accepted,
        ),
        case(
            "a Struct's members are not fields: eventId and event_id are two names there",
            RUN_CAPSULE,
            r#"{"input":{"eventId":1,"event_id":2}}"#,
            Expect::Accepted,
        ),
        case(
            "both spellings in sibling messages",
            KEYS,
            r#"{"keys":[{"keyId":"a"},{"key_id":"b"}]}"#,
            Expect::Accepted,
        ),
        case(
            "both spellings in sibling map values",
            MAP,
            r#"{"items":{"x":{"eventId":"a"},"y":{"event_id":"b"}}}"#,
            Expect::Accepted,
        ),
        case(
            "either spelling alone",
            RUNS,
            r#"{"event_id":"a","capsule_id":"c","runId":"r"}"#,
            Expect::Accepted,
        ),
        case("an empty body", RUNS, "", Expect::Accepted),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let got = transcode_body(case.target, case.body.as_bytes());
        let ok = match (&case.expected, &got) {
            (Expect::Accepted, Ok(())) => true,
            (Expect::Refused(reason, message), Err(e)) => e.reason() == *reason && e.to_string() == *message,
            _ => false,
        };
        if !ok {
            let want = match &case.expected {
                Expect::Accepted => "accepted".to_owned(),
                Expect::Refused(reason, message) => format!("{reason}: {message}"),
            };
            let got = match &got {
                Ok(()) => "accepted".to_owned(),
                Err(e) => format!("{}: {e}", e.reason()),
            };
            failures.push(format!("{}\n    want {want}\n    got  {got}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

/// A body without duplicate names parses exactly as `serde_json::from_slice`
/// parses it (value, or error message), so strictness changed nothing else:
/// numbers at and beyond the integer ranges, floats, escapes, surrogates,
/// trailing characters, and serde_json's own recursion limit.
#[test]
fn a_body_without_duplicates_parses_exactly_as_serde_json_parses_it() {
    let deep_ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
    let too_deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
    let bodies: Vec<&[u8]> = vec![
        b"{}",
        b" \n{ } \t",
        b"[]",
        b"null",
        b"true",
        b"\"s\"",
        br#"{"a":0,"b":-0,"c":-0.0,"d":1.5,"e":1e308,"f":-1e-300,"g":0.1,"h":5e-324}"#,
        br#"{"max_u64":18446744073709551615,"over_u64":18446744073709551616,"min_i64":-9223372036854775808,"under_i64":-9223372036854775809}"#,
        br#"{"big":123456789012345678901234567890,"exp":1E2,"neg_exp":2e-2}"#,
        br#"{"s":"\" \\ \/ \b \f \n \r \t \u0000 \u00e9 \ud83d\ude00 \u2028"}"#,
        "{\"é\":\"ü\",\"a\":{\"b\":[1,{\"c\":null}]}}".as_bytes(),
        br#"{"a":[1,2,3],"b":{"a":[{"a":{}}]}}"#,
        deep_ok.as_bytes(),
        // Errors: the message is serde_json's.
        too_deep.as_bytes(),
        b"{\"a\":1e400}",
        br#"{"a":"\ud800"}"#,
        br#"{"a":"\u00"}"#,
        b"{\"a\":1,}",
        b"{\"a\":1} x",
        b"{\"a\" 1}",
        b"{'a':1}",
        b"{\"a\":NaN}",
        b"{\"a\":01}",
        b"{\"a\":\"\xff\"}",
        b"{\"a\":\"tab\there\"}",
        b"{\"a\":1",
    ];
    for body in bodies {
        let ours = transcode::parse_json(body).map_err(|e| match e {
            TranscodeError::NotJson(message) => message,
            other => panic!("{}: {other}", String::from_utf8_lossy(body)),
        });
        let theirs = serde_json::from_slice::<Value>(body).map_err(|e| e.to_string());
        assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(body));
    }
    // The one intended difference: serde_json's private raw-value member name
    // is an ordinary name, not a request to parse its string a second time
    // (which would hide the duplicate inside that string).
    let body = br#"{"$serde_json::private::RawValue":"{\"a\":1,\"a\":2}"}"#;
    assert_eq!(
        transcode::parse_json(body).unwrap(),
        json!({"$serde_json::private::RawValue": "{\"a\":1,\"a\":2}"})
    );
    assert_eq!(
        serde_json::from_slice::<Value>(body).unwrap(),
        json!({"a": 2}),
        "serde_json still re-parses the raw-value name; if this changed, drop this note"
    );
}
