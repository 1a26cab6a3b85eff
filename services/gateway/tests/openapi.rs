//! The OpenAPI document generated from the real route table: structure,
//! key routes and schemas, and acceptance by `openapi-spec-validator`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use std::collections::HashSet;
use std::process::Command;

use serde_json::{Value, json};
use soma_gateway::openapi::{OpenApiInfo, openapi};
use soma_gateway::routes::RouteTable;

fn document() -> Value {
    let table = RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).unwrap();
    openapi(
        &table,
        &OpenApiInfo {
            title: "SomaStack".to_owned(),
            version: "0.1.0".to_owned(),
            server_url: Some("https://api.example.test".to_owned()),
        },
    )
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().expect("$ref is a string").to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((path.clone(), method.clone(), op));
        }
    }
    out
}

fn op<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "no {method} {path}");
    op
}

fn param<'a>(op: &'a Value, name: &str, location: &str) -> &'a Value {
    op["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no parameters", op["operationId"]))
        .iter()
        .find(|p| p["name"] == name && p["in"] == location)
        .unwrap_or_else(|| panic!("{} has no {location} parameter {name}", op["operationId"]))
}

fn param_names(op: &Value, location: &str) -> Vec<String> {
    op["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["in"] == location)
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    s
}

#[test]
fn the_document_is_structurally_sound() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"], json!({ "title": "SomaStack", "version": "0.1.0" }));
    assert_eq!(doc["servers"], json!([{ "url": "https://api.example.test" }]));

    // Every $ref resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 100, "the document uses references");
    for r in &refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    // No schema is left as a placeholder.
    for (name, s) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(s.is_object(), "schema {name} is {s}");
    }

    // One operation per route, unique operationIds, path params declared
    // exactly.
    let table = RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).unwrap();
    let ops = operations(&doc);
    assert_eq!(ops.len(), table.len());
    let mut ids = HashSet::new();
    for (path, method, op) in &ops {
        let id = op["operationId"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
        let in_template: Vec<String> = path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap().to_owned())
            .collect();
        let declared = param_names(op, "path");
        assert_eq!(in_template, declared, "{method} {path}");
        for name in &declared {
            assert_eq!(
                param(op, name, "path")["required"],
                true,
                "{method} {path} {name}"
            );
        }
        let mut names = HashSet::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            assert!(
                names.insert((p["name"].clone(), p["in"].clone())),
                "{method} {path} declares {} twice",
                p["name"]
            );
        }
        assert!(op["x-grpc-path"].as_str().unwrap().starts_with("/somastack.v1."));
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()));
        let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert_eq!(
            statuses,
            [
                "200", "400", "401", "403", "404", "409", "413", "422", "429", "500", "501", "503"
            ]
        );
        if method == "get" {
            assert!(op.get("requestBody").is_none(), "{method} {path} has a body");
        }
    }
    assert_eq!(doc["security"], json!([{ "bearerAuth": [] }]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"],
        json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT" })
    );
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["Analytics", "CapsuleRepo", "Gateway", "ToolRegistry"]);
}

#[test]
fn key_routes_have_their_parameters_bodies_and_policies() {
    let doc = document();

    let review = op(&doc, "/v1/submissions/{submission_id}:review", "post");
    assert_eq!(review["operationId"], "CapsuleRepo_ReviewSubmission");
    assert_eq!(review["tags"], json!(["CapsuleRepo"]));
    assert_eq!(review["summary"], "Records a review decision.");
    assert_eq!(
        review["x-grpc-path"],
        "/somastack.v1.CapsuleRepo/ReviewSubmission"
    );
    assert_eq!(review["x-capability"], "capsules:review");
    assert_eq!(review["x-mfa-required"], true);
    assert_eq!(
        param(review, "submission_id", "path"),
        &json!({ "name": "submission_id", "in": "path", "required": true, "schema": { "type": "string" } })
    );
    assert!(
        param_names(review, "query").is_empty(),
        "a body: * route has no query"
    );
    assert_eq!(
        review["requestBody"],
        json!({
            "required": true,
            "content": { "application/json": { "schema": {
                "$ref": "#/components/schemas/somastack.v1.ReviewSubmissionRequest"
            } } }
        })
    );
    assert_eq!(
        review["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/somastack.v1.Review"
    );

    let list = op(&doc, "/v1/submissions", "get");
    assert_eq!(list["x-mfa-required"], false);
    assert_eq!(
        param_names(list, "query"),
        ["state", "page.pageSize", "page.pageToken", "capsule"]
    );
    assert_eq!(
        param(list, "state", "query")["schema"],
        json!({ "type": "string", "enum": [
            "SUBMISSION_STATE_UNSPECIFIED", "SUBMISSION_STATE_PENDING",
            "SUBMISSION_STATE_APPROVED", "SUBMISSION_STATE_REJECTED",
            "SUBMISSION_STATE_IN_REVIEW", "SUBMISSION_STATE_CHANGES_REQUESTED"
        ] })
    );
    assert_eq!(
        param(list, "page.pageSize", "query")["schema"],
        json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4_294_967_295_u32 })
    );

    let export = op(&doc, "/v1/exports/billing-ledger", "get");
    assert_eq!(export["operationId"], "Analytics_ExportBillingLedger");
    assert_eq!(
        param_names(export, "query"),
        ["tenant", "from", "to", "tool", "service"]
    );
    assert_eq!(
        param(export, "from", "query")["schema"],
        json!({ "type": "string", "format": "date-time" })
    );
    let ok = &export["responses"]["200"]["content"];
    assert_eq!(
        ok["application/x-ndjson"]["schema"]["$ref"],
        "#/components/schemas/somastack.v1.ExportChunk"
    );
    assert!(ok.get("application/json").is_none());

    let release = op(&doc, "/v1/tools/{tool}/releases/{version}", "get");
    assert_eq!(param_names(release, "path"), ["tool", "version"]);
    assert!(param_names(release, "query").is_empty());

    let proof = op(&doc, "/v1/ledger/inclusion-proof", "get");
    assert_eq!(param_names(proof, "query"), ["eventId", "treeSize"]);
    assert_eq!(
        param(proof, "treeSize", "query")["schema"],
        json!({ "type": "string", "pattern": "^[0-9]+$" })
    );

    let verify = op(&doc, "/v1/admin/store:verify", "post");
    assert_eq!(verify["operationId"], "Analytics_VerifyStore");
    assert_eq!(verify["x-capability"], "ops:store-verify");

    let r401 = &review["responses"]["401"];
    assert_eq!(
        r401["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    assert!(r401["headers"]["WWW-Authenticate"].is_object());
    for status in ["429", "503"] {
        assert_eq!(
            review["responses"][status]["headers"]["Retry-After"]["schema"],
            json!({ "type": "integer", "minimum": 0 })
        );
    }
}

#[test]
fn schemas_follow_the_proto3_json_mapping() {
    let doc = document();

    let installation = schema(&doc, "somastack.v1.Installation");
    assert_eq!(installation["type"], "object");
    assert_eq!(installation["additionalProperties"], false);
    let props = &installation["properties"];
    let keys: Vec<&String> = props.as_object().unwrap().keys().collect();
    let mut expected = [
        "installationId",
        "tenant",
        "environment",
        "submissionId",
        "revision",
        "updatedAt",
        "status",
        "capsule",
        "version",
        "failureReason",
        "activeRevision",
        "activeSubmissionId",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(props["revision"]["type"], "string");
    assert_eq!(props["revision"]["pattern"], "^[0-9]+$");
    assert_eq!(props["updatedAt"]["type"], "string");
    assert_eq!(props["updatedAt"]["format"], "date-time");

    let money = &schema(&doc, "somastack.v1.Money")["properties"];
    assert_eq!(money["micros"]["pattern"], "^-?[0-9]+$");
    assert_eq!(money["currency"]["type"], "string");

    let run = &schema(&doc, "somastack.v1.RecordCapsuleRunRequest")["properties"];
    assert_eq!(run["duration"]["pattern"], r"^-?[0-9]+(\.[0-9]{1,9})?s$");
    assert_eq!(
        run["outcome"]["enum"],
        json!([
            "RUN_OUTCOME_UNSPECIFIED",
            "RUN_OUTCOME_SUCCEEDED",
            "RUN_OUTCOME_FAILED",
            "RUN_OUTCOME_REFUSED"
        ])
    );

    let release = &schema(&doc, "somastack.v1.Release")["properties"];
    assert_eq!(release["manifest"]["type"], "object");
    assert_eq!(release["manifestSha256"]["format"], "byte");

    // PageRequest only ever travels in a query: no component for it.
    assert!(
        doc["components"]["schemas"]
            .get("somastack.v1.PageRequest")
            .is_none()
    );

    let finding = &schema(&doc, "somastack.v1.AnomalyFinding")["properties"];
    assert_eq!(finding["score"]["type"], "number");
    assert_eq!(finding["score"]["format"], "double");

    let proof = &schema(&doc, "somastack.v1.InclusionProofResponse")["properties"];
    assert_eq!(proof["proof"]["type"], "array");
    assert_eq!(
        proof["proof"]["items"],
        json!({ "type": "string", "format": "byte" })
    );
    assert_eq!(
        proof["checkpoint"]["$ref"],
        "#/components/schemas/somastack.v1.Checkpoint"
    );

    let drill = &schema(&doc, "somastack.v1.RecordDisasterDrillRequest")["properties"];
    assert_eq!(
        drill["steps"]["items"]["$ref"],
        "#/components/schemas/somastack.v1.DrillStep"
    );

    let claims = &schema(&doc, "somastack.v1.WhoAmIResponse")["properties"];
    assert_eq!(
        claims["capabilities"],
        json!({ "type": "array", "items": { "type": "string" }, "description": "Capabilities of the verified claims." })
    );

    let error = schema(&doc, "Error");
    let keys: Vec<&String> = error["properties"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["code", "details", "message", "reason", "request_id"]);
    assert_eq!(error["properties"]["code"]["type"], "integer");
    assert_eq!(error["properties"]["details"]["type"], "array");

    // Well-known types are inline, never components.
    let names: Vec<&String> = doc["components"]["schemas"].as_object().unwrap().keys().collect();
    assert!(
        names.iter().all(|n| !n.starts_with("google.protobuf.")),
        "{names:?}"
    );
}

fn validate_with_python(doc: &Value) -> std::process::Output {
    let python = std::env::var("SOMA_PYTHON").expect(
        "SOMA_PYTHON is not set: point it at a Python with openapi-spec-validator \
         (scripts/test.sh sets it to /work/main/.venv/bin/python)",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    Command::new(&python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n\
             print('valid')",
        ])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"))
}

#[test]
fn openapi_spec_validator_accepts_the_document() {
    let doc = document();
    let out = validate_with_python(&doc);
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");

    // The validator really checks: a dangling reference is refused.
    let mut broken = doc;
    broken["components"]["schemas"]
        .as_object_mut()
        .unwrap()
        .remove("somastack.v1.Review");
    let out = validate_with_python(&broken);
    assert!(!out.status.success(), "a dangling $ref was accepted");
}
