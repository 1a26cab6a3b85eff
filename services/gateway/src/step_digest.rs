//! The digest a capsule step's moderation decision is bound to, written
//! straight from the generated message.
//!
//! A step's envelope carries SHA-256 of the RFC 8785 form of the step
//! message's proto3 JSON ([`crate::moderation::input_digest`]), the same
//! bytes a backend reaches from the message it receives. The generic route
//! there (encode, decode as a `DynamicMessage`, serialize to a
//! `serde_json::Value`, canonicalize) builds three copies of the message on
//! every step; this writes the canonical JSON of `ExecuteCapsuleStepRequest`
//! once, member by member in RFC 8785's order, with the proto3 JSON mapping
//! of each field: default values omitted, `bytes` as padded standard
//! base64, `uint64` as a decimal string, `Timestamp` and `Duration` in their
//! RFC 3339 and `"<seconds>s"` forms (range-checked as the generic
//! serializer checks them), `Struct` values as JSON.
//!
//! The tests hold it to the generic route byte for byte, and fail when any
//! of the three messages gains a field this writer does not know, so the
//! two can never drift apart silently.

use base64::Engine as _;
use prost_types::value::Kind;
use soma_proto::v1 as pb;
use soma_sign::jcs;

/// `google.protobuf.Timestamp`'s proto3 JSON range: 0001-01-01T00:00:00Z
/// to 9999-12-31T23:59:59.999999999Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
/// `google.protobuf.Duration`'s range: ±10,000 years.
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;
const MAX_DURATION_NANOS: u32 = 999_999_999;

/// Why a step message has no canonical form (the generic route refuses
/// the same messages).
#[derive(Debug)]
pub(crate) struct NotCanonical;

/// SHA-256 of the RFC 8785 canonical form of `request`'s proto3 JSON.
pub(crate) fn step_digest(request: &pb::ExecuteCapsuleStepRequest) -> Result<[u8; 32], NotCanonical> {
    let mut out = Vec::with_capacity(512);
    write_step(&mut out, request)?;
    Ok(soma_sign::sha256(&out))
}

/// Writes `request` as RFC 8785 canonical proto3 JSON. Members go in the
/// order of their JSON names as RFC 8785 §3.2.3 sorts them; every name here
/// is ASCII, so that is byte order, as written.
fn write_step(out: &mut Vec<u8>, request: &pb::ExecuteCapsuleStepRequest) -> Result<(), NotCanonical> {
    let mut object = Object::open(out);
    if let Some(execute) = &request.execute {
        object.member(b"execute");
        write_execute(object.out, execute)?;
    }
    if !request.module_sha256.is_empty() {
        object.member(b"moduleSha256");
        push_bytes(object.out, &request.module_sha256);
    }
    if let Some(run) = &request.run {
        object.member(b"run");
        write_run(object.out, run)?;
    }
    object.close();
    Ok(())
}

fn write_execute(out: &mut Vec<u8>, execute: &pb::ExecuteToolRequest) -> Result<(), NotCanonical> {
    let mut object = Object::open(out);
    if let Some(input) = &execute.input {
        object.member(b"input");
        // The request is level 0, `execute` level 1.
        write_struct(object.out, input, 2)?;
    }
    object.string(b"runId", &execute.run_id);
    object.string(b"tool", &execute.tool);
    object.string(b"version", &execute.version);
    object.close();
    Ok(())
}

fn write_run(out: &mut Vec<u8>, run: &pb::CapsuleRunStep) -> Result<(), NotCanonical> {
    let mut object = Object::open(out);
    if !run.bundle_sha256.is_empty() {
        object.member(b"bundleSha256");
        push_bytes(object.out, &run.bundle_sha256);
    }
    object.string(b"capsuleId", &run.capsule_id);
    object.string(b"capsuleVersion", &run.capsule_version);
    if let Some(elapsed) = &run.elapsed {
        if elapsed.seconds.unsigned_abs() > MAX_DURATION_SECONDS
            || elapsed.nanos.unsigned_abs() > MAX_DURATION_NANOS
        {
            return Err(NotCanonical);
        }
        object.member(b"elapsed");
        push_display(object.out, elapsed);
    }
    object.string(b"environment", &run.environment);
    if run.installation_revision != 0 {
        object.member(b"installationRevision");
        push_display(object.out, &run.installation_revision);
    }
    if run.last_step {
        object.member(b"lastStep");
        object.out.extend_from_slice(b"true");
    }
    if let Some(started_at) = &run.started_at {
        if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&started_at.seconds) {
            return Err(NotCanonical);
        }
        object.member(b"startedAt");
        push_display(object.out, started_at);
    }
    object.close();
    Ok(())
}

/// The deepest level at which a message still decodes in the generic
/// route (`prost-reflect`, whose recursion limit is 100 nested messages),
/// counting the request as level 0; the generic route refuses anything
/// deeper, and so does this writer, at the same message (the tests find
/// the boundary by nesting `Struct`s and lists one level at a time).
const MAX_LEVEL: usize = 101;

/// A `Struct` whose message sits at nesting `level`, as a canonical JSON
/// object: its members sorted by RFC 8785's order (a `Struct`'s keys are
/// any strings, so the UTF-16 walk where a name is not ASCII). Each member
/// is a map entry message one level down, its `Value` two.
fn write_struct(out: &mut Vec<u8>, object: &prost_types::Struct, level: usize) -> Result<(), NotCanonical> {
    if level > MAX_LEVEL {
        return Err(NotCanonical);
    }
    let mut members: Vec<(&String, &prost_types::Value)> = object.fields.iter().collect();
    // A `BTreeMap` orders its keys by code point, which RFC 8785's UTF-16
    // order differs from only for names with characters beyond U+FFFF.
    if !members.iter().all(|(name, _)| name.is_ascii()) {
        members.sort_by(|a, b| jcs::member_order(a.0, b.0));
    }
    out.push(b'{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        jcs::push_string(out, name);
        out.push(b':');
        write_value(out, value, level + 2)?;
    }
    out.push(b'}');
    Ok(())
}

/// A `Value` whose message sits at nesting `level`.
fn write_value(out: &mut Vec<u8>, value: &prost_types::Value, level: usize) -> Result<(), NotCanonical> {
    if level > MAX_LEVEL {
        return Err(NotCanonical);
    }
    match &value.kind {
        // proto3 JSON writes a `Value` with no kind as `null`, as it does
        // the null value.
        None | Some(Kind::NullValue(_)) => out.extend_from_slice(b"null"),
        Some(Kind::BoolValue(true)) => out.extend_from_slice(b"true"),
        Some(Kind::BoolValue(false)) => out.extend_from_slice(b"false"),
        Some(Kind::NumberValue(number)) => {
            let text = jcs::format_number(*number).map_err(|_| NotCanonical)?;
            out.extend_from_slice(text.as_bytes());
        }
        Some(Kind::StringValue(text)) => jcs::push_string(out, text),
        Some(Kind::StructValue(object)) => write_struct(out, object, level + 1)?,
        Some(Kind::ListValue(list)) => {
            if level + 1 > MAX_LEVEL {
                return Err(NotCanonical);
            }
            out.push(b'[');
            for (i, item) in list.values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, level + 2)?;
            }
            out.push(b']');
        }
    }
    Ok(())
}

/// A JSON object being written: commas between members.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// Writes the name of the next member (ASCII, needing no escape).
    fn member(&mut self, name: &[u8]) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b"\":");
    }

    /// A `string` field: omitted when empty (its default).
    fn string(&mut self, name: &[u8], value: &str) {
        if !value.is_empty() {
            self.member(name);
            jcs::push_string(self.out, value);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// `bytes` in proto3 JSON: standard base64 with padding, which needs no
/// escape.
fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes());
    out.push(b'"');
}

/// A value whose `Display` is its proto3 JSON string (`uint64`, and the
/// RFC 3339 / `"<seconds>s"` forms of `Timestamp` and `Duration`, which
/// the generic serializer writes with the same `Display`), quoted; none of
/// them contains a character that needs an escape.
fn push_display(out: &mut Vec<u8>, value: &impl std::fmt::Display) {
    use std::io::Write as _;
    out.push(b'"');
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, "{value}");
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost_types::{ListValue, Struct, Value};

    use super::*;

    fn text(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        }
    }

    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    fn object(members: &[(&str, Value)]) -> Struct {
        Struct {
            fields: members
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    /// The generic route the envelope used before: the message's proto3
    /// JSON through `prost-reflect`, canonicalized by `soma_sign::jcs`.
    fn generic(request: &pb::ExecuteCapsuleStepRequest) -> Option<Vec<u8>> {
        let json =
            crate::transcode::message_to_json("somastack.v1.ExecuteCapsuleStepRequest", request).ok()?;
        jcs::canonicalize(&json).ok()
    }

    fn written(request: &pb::ExecuteCapsuleStepRequest) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        write_step(&mut out, request).ok()?;
        Some(out)
    }

    fn step() -> pb::ExecuteCapsuleStepRequest {
        pb::ExecuteCapsuleStepRequest {
            execute: Some(pb::ExecuteToolRequest {
                tool: "text-stats".to_owned(),
                version: "1.0.0".to_owned(),
                input: Some(object(&[
                    ("text", text("Hello, \"world\"\n\u{1}é😀")),
                    ("limit", number(3.0)),
                    ("ratio", number(0.1)),
                    ("big", number(1e21)),
                    ("tiny", number(-5e-7)),
                    ("zero", number(-0.0)),
                    (
                        "flag",
                        Value {
                            kind: Some(Kind::BoolValue(false)),
                        },
                    ),
                    (
                        "none",
                        Value {
                            kind: Some(Kind::NullValue(0)),
                        },
                    ),
                    ("unset", Value { kind: None }),
                    (
                        "list",
                        Value {
                            kind: Some(Kind::ListValue(ListValue {
                                values: vec![
                                    number(1.5),
                                    text(""),
                                    Value {
                                        kind: Some(Kind::BoolValue(true)),
                                    },
                                ],
                            })),
                        },
                    ),
                    (
                        "nested",
                        Value {
                            kind: Some(Kind::StructValue(object(&[("b", number(2.0)), ("a", text("x"))]))),
                        },
                    ),
                    // U+10000 sorts before U+E000 in UTF-16 code units,
                    // after it by code point (the `BTreeMap`'s order).
                    ("\u{10000}", number(1.0)),
                    ("\u{e000}", number(2.0)),
                    ("", text("empty name")),
                ])),
                run_id: "run-0123456789abcdef0123456789abcdef".to_owned(),
            }),
            module_sha256: (0u8..32).collect(),
            run: Some(pb::CapsuleRunStep {
                capsule_id: "text-stats".to_owned(),
                capsule_version: "1.0.0".to_owned(),
                bundle_sha256: vec![0xff; 32],
                environment: "production".to_owned(),
                installation_revision: 18_446_744_073_709_551_615,
                started_at: Some(prost_types::Timestamp {
                    seconds: 1_796_000_000,
                    nanos: 123_456_789,
                }),
                elapsed: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 120_000,
                }),
                last_step: true,
            }),
        }
    }

    struct Case {
        name: &'static str,
        input: pb::ExecuteCapsuleStepRequest,
    }

    /// Every field set, each default, the well-known types' fraction
    /// widths, the ranges' edges and what lies beyond them: the writer's
    /// bytes (or its refusal) are the generic route's.
    #[test]
    fn the_written_canonical_json_is_the_generic_routes_byte_for_byte() {
        let with_run = |f: &dyn Fn(&mut pb::CapsuleRunStep)| {
            let mut request = step();
            if let Some(run) = request.run.as_mut() {
                f(run);
            }
            request
        };
        let with_execute = |f: &dyn Fn(&mut pb::ExecuteToolRequest)| {
            let mut request = step();
            if let Some(execute) = request.execute.as_mut() {
                f(execute);
            }
            request
        };
        let timestamp = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let duration = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        let cases = vec![
            Case {
                name: "every field set",
                input: step(),
            },
            Case {
                name: "empty message",
                input: pb::ExecuteCapsuleStepRequest::default(),
            },
            Case {
                name: "empty sub-messages",
                input: pb::ExecuteCapsuleStepRequest {
                    execute: Some(pb::ExecuteToolRequest::default()),
                    module_sha256: Vec::new(),
                    run: Some(pb::CapsuleRunStep::default()),
                },
            },
            Case {
                name: "empty input struct",
                input: with_execute(&|e| e.input = Some(Struct::default())),
            },
            Case {
                name: "no input",
                input: with_execute(&|e| e.input = None),
            },
            Case {
                name: "first step",
                input: with_run(&|r| r.last_step = false),
            },
            Case {
                name: "revision 0",
                input: with_run(&|r| r.installation_revision = 0),
            },
            Case {
                name: "revision 1",
                input: with_run(&|r| r.installation_revision = 1),
            },
            Case {
                name: "odd byte count",
                input: with_run(&|r| r.bundle_sha256 = vec![1, 2, 3, 4, 5]),
            },
            Case {
                name: "whole seconds",
                input: with_run(&|r| r.started_at = timestamp(0, 0)),
            },
            Case {
                name: "milliseconds",
                input: with_run(&|r| r.started_at = timestamp(1, 5_000_000)),
            },
            Case {
                name: "microseconds",
                input: with_run(&|r| r.started_at = timestamp(1, 5_000)),
            },
            Case {
                name: "before 1970",
                input: with_run(&|r| r.started_at = timestamp(-1, 999_999_999)),
            },
            Case {
                name: "year 1",
                input: with_run(&|r| r.started_at = timestamp(MIN_TIMESTAMP_SECONDS, 0)),
            },
            Case {
                name: "year 9999",
                input: with_run(&|r| r.started_at = timestamp(MAX_TIMESTAMP_SECONDS, 999_999_999)),
            },
            Case {
                name: "before year 1",
                input: with_run(&|r| r.started_at = timestamp(MIN_TIMESTAMP_SECONDS - 1, 0)),
            },
            Case {
                name: "after year 9999",
                input: with_run(&|r| r.started_at = timestamp(MAX_TIMESTAMP_SECONDS + 1, 0)),
            },
            Case {
                name: "zero duration",
                input: with_run(&|r| r.elapsed = duration(0, 0)),
            },
            Case {
                name: "whole duration",
                input: with_run(&|r| r.elapsed = duration(3, 0)),
            },
            Case {
                name: "nanosecond duration",
                input: with_run(&|r| r.elapsed = duration(0, 1)),
            },
            Case {
                name: "negative duration",
                input: with_run(&|r| r.elapsed = duration(-1, -500_000_000)),
            },
            Case {
                name: "longest duration",
                input: with_run(&|r| r.elapsed = duration(315_576_000_000, 999_999_999)),
            },
            Case {
                name: "too long a duration",
                input: with_run(&|r| r.elapsed = duration(315_576_000_001, 0)),
            },
            Case {
                name: "nanos out of range",
                input: with_run(&|r| r.elapsed = duration(0, 1_000_000_000)),
            },
            Case {
                name: "no duration",
                input: with_run(&|r| r.elapsed = None),
            },
            Case {
                name: "a number that is not finite",
                input: with_execute(&|e| e.input = Some(object(&[("x", number(f64::NAN))]))),
            },
            Case {
                name: "escapes in every string field",
                input: with_run(&|r| {
                    r.capsule_id = "a\"b\\c\u{7f}\u{1f}".to_owned();
                    r.environment = "\u{2028}é".to_owned();
                }),
            },
        ];
        for case in cases {
            let generic = generic(&case.input);
            assert_eq!(
                written(&case.input).map(String::from_utf8),
                generic.clone().map(String::from_utf8),
                "{}",
                case.name
            );
            if let Some(bytes) = generic {
                assert_eq!(
                    step_digest(&case.input).ok(),
                    Some(soma_sign::sha256(&bytes)),
                    "{}",
                    case.name
                );
            } else {
                assert!(step_digest(&case.input).is_err(), "{}", case.name);
            }
        }
    }

    /// Nesting: `Struct`s in `Struct`s and lists in lists, one level more
    /// at a time, past where the generic route refuses: refused exactly
    /// where it is.
    #[test]
    fn nesting_is_refused_exactly_where_the_generic_route_refuses_it() {
        let mut refused = (None, None);
        for levels in 1..64 {
            let mut nested = Struct::default();
            let mut list = Value {
                kind: Some(Kind::NullValue(0)),
            };
            for _ in 1..levels {
                nested = object(&[(
                    "d",
                    Value {
                        kind: Some(Kind::StructValue(nested)),
                    },
                )]);
                list = Value {
                    kind: Some(Kind::ListValue(ListValue { values: vec![list] })),
                };
            }
            for (deep, first) in [
                (Some(nested), &mut refused.0),
                (Some(object(&[("l", list)])), &mut refused.1),
            ] {
                let mut request = step();
                if let Some(execute) = request.execute.as_mut() {
                    execute.input = deep;
                }
                let generic = generic(&request);
                assert_eq!(written(&request), generic, "{levels} levels");
                if generic.is_none() && first.is_none() {
                    *first = Some(levels);
                }
            }
        }
        // Both kinds of nesting reach the limit within the loop.
        assert_eq!(refused, (Some(35), Some(50)));
    }

    /// The writer knows every field of the three messages: a field added
    /// to the proto fails this test until the writer writes it.
    #[test]
    fn the_writer_knows_every_field_of_the_step_messages() {
        let pool = soma_proto::descriptor_pool().expect("descriptor pool");
        let known: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
            (
                "somastack.v1.ExecuteCapsuleStepRequest",
                vec!["execute", "moduleSha256", "run"],
            ),
            (
                "somastack.v1.ExecuteToolRequest",
                vec!["input", "runId", "tool", "version"],
            ),
            (
                "somastack.v1.CapsuleRunStep",
                vec![
                    "bundleSha256",
                    "capsuleId",
                    "capsuleVersion",
                    "elapsed",
                    "environment",
                    "installationRevision",
                    "lastStep",
                    "startedAt",
                ],
            ),
        ]);
        for (message, fields) in known {
            let desc = pool.get_message_by_name(message).expect(message);
            let mut names: Vec<String> = desc.fields().map(|f| f.json_name().to_owned()).collect();
            names.sort_unstable();
            assert_eq!(names, fields, "{message}");
        }
    }
}
