//! The OpenAPI 3.0.3 document of the JSON edge, generated from the route
//! table and the descriptors it was read from.
//!
//! Nothing here is written per route: paths, parameters, bodies and schemas
//! follow the `google.api.http` rules and the proto3 JSON mapping, so the
//! document cannot drift from what the edge accepts. Message schemas set
//! `additionalProperties: false` because the edge rejects unknown fields.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::routes::{Route, RouteBody, RouteTable};

/// Name of the error schema in `components/schemas`.
const ERROR_SCHEMA: &str = "Error";

/// Error statuses every operation documents, with their descriptions.
const ERROR_RESPONSES: [(u16, &str); 11] = [
    (400, "The request is malformed or a parameter is invalid."),
    (401, "No valid credentials were presented."),
    (403, "The caller may not call this method."),
    (404, "The route or the resource does not exist."),
    (409, "The request conflicts with the resource's current state."),
    (413, "The request body is too large."),
    (
        422,
        "The request is well-formed but refused (e.g. by moderation).",
    ),
    (429, "Too many requests; retry after the indicated delay."),
    (500, "An internal error."),
    (501, "The method is not implemented."),
    (
        503,
        "The service is unavailable (e.g. a kill switch); retry later.",
    ),
];

/// Title, version and server of the document.
#[derive(Clone, Debug)]
pub struct OpenApiInfo {
    /// `info.title`.
    pub title: String,
    /// `info.version`.
    pub version: String,
    /// The single entry of `servers`, when known.
    pub server_url: Option<String>,
}

/// OpenAPI 3.0.3 document for every route of the table.
pub fn openapi(table: &RouteTable, info: &OpenApiInfo) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags = BTreeSet::new();
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    for route in table.iter() {
        let short = short_service(&route.service).to_owned();
        tags.insert(short.clone());
        let base_id = format!("{short}_{}", route.method.name());
        // Additional bindings of one method get `_2`, `_3`, ... so that
        // operationIds stay unique.
        let n = operation_ids.entry(base_id.clone()).or_insert(0);
        *n += 1;
        let operation_id = if *n == 1 {
            base_id
        } else {
            format!("{base_id}_{n}")
        };
        let operation = operation(route, &short, operation_id, &mut schemas);
        paths
            .entry(openapi_path(&route.template))
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), operation);
    }
    let mut components_schemas: Map<String, Value> = schemas.done.into_iter().collect();
    components_schemas.insert(ERROR_SCHEMA.to_owned(), error_schema());
    let mut document = json!({
        "openapi": "3.0.3",
        "info": { "title": info.title, "version": info.version },
        "tags": tags.into_iter().map(|t| json!({ "name": t })).collect::<Vec<_>>(),
        "paths": paths.into_iter().map(|(k, v)| (k, Value::Object(v))).collect::<Map<_, _>>(),
        "components": {
            "schemas": components_schemas,
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
            }
        },
        "security": [ { "bearerAuth": [] } ],
    });
    if let Some(url) = &info.server_url {
        document["servers"] = json!([{ "url": url }]);
    }
    document
}

fn short_service(full: &str) -> &str {
    full.rsplit('.').next().unwrap_or(full)
}

/// `{field=pattern}` becomes `{field}`; literals and the `:verb` stay.
fn openapi_path(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').unwrap_or(after.len());
        let inner = &after[..close];
        let field = inner.split_once('=').map_or(inner, |(f, _)| f);
        out.push('{');
        out.push_str(field);
        out.push('}');
        rest = after.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

fn operation(route: &Route, tag: &str, operation_id: String, schemas: &mut Schemas) -> Value {
    let method = &route.method;
    let comment = comment_of(method.parent_file().file_descriptor_proto(), method.path());
    let summary = comment
        .as_deref()
        .and_then(|c| c.lines().next())
        .map_or_else(|| method.name().to_owned(), |line| line.trim().to_owned());
    let input = method.input();
    let mut parameters = Vec::new();
    for field_path in &route.path_fields {
        let schema = field_path_descriptor(&input, field_path)
            .map_or_else(|| json!({ "type": "string" }), |f| schemas.field(&f));
        parameters.push(json!({
            "name": field_path,
            "in": "path",
            "required": true,
            "schema": schema,
        }));
    }
    let body_field = match &route.body {
        RouteBody::Whole => None,
        RouteBody::None => {
            query_parameters(&input, route, None, schemas, &mut parameters);
            None
        }
        RouteBody::Field(name) => {
            query_parameters(&input, route, Some(name), schemas, &mut parameters);
            input.get_field_by_name(name)
        }
    };
    let mut op = json!({
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "x-grpc-path": route.grpc_path,
        "responses": responses(route, schemas),
    });
    if let Some(c) = comment {
        op["description"] = Value::String(c);
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    let body_schema = match (&route.body, body_field) {
        (RouteBody::Whole, _) => Some(schemas.message(&input)),
        (RouteBody::Field(_), Some(f)) => Some(schemas.field(&f)),
        _ => None,
    };
    if let Some(schema) = body_schema {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
    }
    if let Some(policy) = &route.policy {
        op["x-capability"] = Value::String(policy.capability.clone());
        op["x-mfa-required"] = Value::Bool(policy.mfa_required);
    }
    op
}

fn responses(route: &Route, schemas: &mut Schemas) -> Value {
    let output = schemas.message(&route.method.output());
    let mut responses = Map::new();
    let ok = if route.server_streaming {
        json!({
            "description": "A stream of response messages, one JSON object per line.",
            "content": { "application/x-ndjson": { "schema": output } },
        })
    } else {
        json!({
            "description": "The response message.",
            "content": { "application/json": { "schema": output } },
        })
    };
    responses.insert("200".to_owned(), ok);
    for (status, description) in ERROR_RESPONSES {
        let mut response = json!({
            "description": description,
            "content": {
                "application/json": {
                    "schema": { "$ref": format!("#/components/schemas/{ERROR_SCHEMA}") }
                }
            },
        });
        let header = match status {
            401 => Some((
                "WWW-Authenticate",
                json!({ "description": "The authentication scheme (Bearer).", "schema": { "type": "string" } }),
            )),
            429 | 503 => Some((
                "Retry-After",
                json!({
                    "description": "Seconds to wait before retrying.",
                    "schema": { "type": "integer", "minimum": 0 },
                }),
            )),
            _ => None,
        };
        if let Some((name, value)) = header {
            let mut headers = Map::new();
            headers.insert(name.to_owned(), value);
            response["headers"] = Value::Object(headers);
        }
        responses.insert(status.to_string(), response);
    }
    Value::Object(responses)
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The error body of every non-2xx response.",
        "required": ["code", "reason", "message", "request_id"],
        "properties": {
            "code": { "type": "integer", "format": "int32", "description": "The HTTP status." },
            "reason": { "type": "string", "description": "A stable machine-readable reason." },
            "message": { "type": "string", "description": "A safe human-readable message." },
            "request_id": { "type": "string", "description": "The request id, for correlation." },
            "details": { "type": "array", "items": {}, "description": "Structured details." },
        },
        "additionalProperties": false,
    })
}

/// Adds a query parameter for every field of `message` that a client may
/// set from the query: singular and repeated scalars, enums and string-form
/// well-known types, through singular nested messages (dotted JSON names).
fn query_parameters(
    input: &MessageDescriptor,
    route: &Route,
    body_field: Option<&str>,
    schemas: &mut Schemas,
    out: &mut Vec<Value>,
) {
    let mut stack = vec![input.full_name().to_owned()];
    collect_query(input, "", "", route, body_field, schemas, &mut stack, out);
}

#[expect(clippy::too_many_arguments, reason = "a recursive walk threading its context")]
fn collect_query(
    message: &MessageDescriptor,
    proto_prefix: &str,
    json_prefix: &str,
    route: &Route,
    body_field: Option<&str>,
    schemas: &mut Schemas,
    stack: &mut Vec<String>,
    out: &mut Vec<Value>,
) {
    for field in message.fields() {
        let proto_path = format!("{proto_prefix}{}", field.name());
        let json_path = format!("{json_prefix}{}", field.json_name());
        if route.path_fields.contains(&proto_path) || body_field == Some(proto_path.as_str()) {
            continue;
        }
        if field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::Message(m) if inline_well_known(&m).is_none() => {
                if field.is_list() || stack.iter().any(|s| s == m.full_name()) {
                    continue;
                }
                stack.push(m.full_name().to_owned());
                collect_query(
                    &m,
                    &format!("{proto_path}."),
                    &format!("{json_path}."),
                    route,
                    body_field,
                    schemas,
                    stack,
                    out,
                );
                stack.pop();
            }
            Kind::Message(m) if !query_well_known(&m) => {}
            _ => {
                let mut parameter = json!({
                    "name": json_path,
                    "in": "query",
                    "required": false,
                    "schema": schemas.field(&field),
                });
                if field.is_list() {
                    parameter["style"] = json!("form");
                    parameter["explode"] = json!(true);
                }
                if let Some(c) = comment_of(field.parent_file().file_descriptor_proto(), field.path()) {
                    parameter["description"] = Value::String(c);
                }
                out.push(parameter);
            }
        }
    }
}

/// Well-known types a query parameter can carry (their JSON form is a
/// string or a scalar).
fn query_well_known(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// The inline schema of a well-known type, per the proto3 JSON mapping.
fn inline_well_known(message: &MessageDescriptor) -> Option<Value> {
    let scalar = |kind: Kind| Some(scalar_schema(&kind));
    match message.full_name() {
        "google.protobuf.Timestamp" => Some(json!({ "type": "string", "format": "date-time" })),
        "google.protobuf.Duration" => Some(json!({
            "type": "string",
            "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        })),
        "google.protobuf.FieldMask" => Some(json!({ "type": "string" })),
        "google.protobuf.Struct" => Some(json!({ "type": "object", "additionalProperties": {} })),
        "google.protobuf.Value" => Some(json!({})),
        "google.protobuf.ListValue" => Some(json!({ "type": "array", "items": {} })),
        "google.protobuf.Empty" => Some(json!({ "type": "object", "additionalProperties": false })),
        "google.protobuf.Any" => Some(json!({
            "type": "object",
            "required": ["@type"],
            "properties": { "@type": { "type": "string" } },
            "additionalProperties": {},
        })),
        "google.protobuf.DoubleValue" => scalar(Kind::Double),
        "google.protobuf.FloatValue" => scalar(Kind::Float),
        "google.protobuf.Int64Value" => scalar(Kind::Int64),
        "google.protobuf.UInt64Value" => scalar(Kind::Uint64),
        "google.protobuf.Int32Value" => scalar(Kind::Int32),
        "google.protobuf.UInt32Value" => scalar(Kind::Uint32),
        "google.protobuf.BoolValue" => scalar(Kind::Bool),
        "google.protobuf.StringValue" => scalar(Kind::String),
        "google.protobuf.BytesValue" => scalar(Kind::Bytes),
        _ => None,
    }
}

fn scalar_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({
            "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX,
        }),
        Kind::Uint32 | Kind::Fixed32 => json!({
            "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX,
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
            "type": "string", "format": "int64", "pattern": "^-?[0-9]+$",
        }),
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "pattern": "^[0-9]+$" }),
        Kind::Double => json!({ "type": "number", "format": "double" }),
        Kind::Float => json!({ "type": "number", "format": "float" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte" }),
        Kind::Enum(e) => json!({
            "type": "string",
            "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>(),
        }),
        // Messages are handled by `Schemas::kind`; an object is the only
        // honest answer if one arrives here.
        Kind::Message(_) => json!({ "type": "object" }),
    }
}

/// The message schemas referenced so far, by full name.
#[derive(Default)]
struct Schemas {
    done: BTreeMap<String, Value>,
}

impl Schemas {
    /// A schema for a message: inline for well-known types, else a `$ref`
    /// to its component (generated on first use).
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(inline) = inline_well_known(message) {
            return inline;
        }
        let name = message.full_name().to_owned();
        if !self.done.contains_key(&name) {
            // Placeholder first so that recursive messages terminate.
            self.done.insert(name.clone(), Value::Null);
            let schema = self.message_schema(message);
            self.done.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        for field in message.fields() {
            let mut schema = self.field(&field);
            let comment = comment_of(field.parent_file().file_descriptor_proto(), field.path());
            // A description beside a `$ref` is ignored in 3.0, so only
            // non-reference schemas carry one.
            if let (Some(c), Some(obj)) = (comment, schema.as_object_mut())
                && !obj.contains_key("$ref")
            {
                obj.insert("description".to_owned(), Value::String(c));
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        if let Some(c) = comment_of(message.parent_file().file_descriptor_proto(), message.path()) {
            schema["description"] = Value::String(c);
        }
        schema
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field(),
                _ => return json!({ "type": "object" }),
            };
            return json!({ "type": "object", "additionalProperties": self.kind(&value.kind()) });
        }
        let item = self.kind(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": item })
        } else {
            item
        }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Message(m) => self.message(m),
            other => scalar_schema(other),
        }
    }
}

/// The leading comment of the element at `path`, trimmed, if the
/// descriptor kept source info.
fn comment_of(file: &prost_types::FileDescriptorProto, path: &[i32]) -> Option<String> {
    let info = file.source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let joined = lines.join("\n").trim().to_owned();
    (!joined.is_empty()).then_some(joined)
}

fn field_path_descriptor(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current.get_field_by_name(part)?;
        if parts.peek().is_none() {
            return Some(field);
        }
        let Kind::Message(m) = field.kind() else {
            return None;
        };
        current = m;
    }
    None
}
