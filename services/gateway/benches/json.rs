//! Cost of strict JSON at the edge: `transcode::parse_json` (duplicate
//! member names refused while parsing) against `serde_json::from_slice`
//! into a `Value` (what `parse_json` was before it was strict), on the same
//! bodies in the same run; and `transcode::json_to_message` (which also
//! refuses two spellings of one field) on the routes' own request messages.
//! Figures are printed by criterion and never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use prost_reflect::MessageDescriptor;
use serde_json::{Value, json};
use soma_gateway::routes::{RouteMatch, RouteTable};
use soma_gateway::transcode;

fn input(table: &RouteTable, path: &str) -> MessageDescriptor {
    match table.find(&Method::POST, path) {
        RouteMatch::Found { route, .. } => route.method.input(),
        _ => panic!("no route for POST {path}"),
    }
}

/// Bodies as tenants send them: a capsule run, a drill with steps, and two
/// large `RunCapsule` inputs (many small objects; one wide object).
fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let run = json!({"eventId": "run-000001", "capsuleId": "capsule-a", "runId": "r-1", "outcome": "RUN_OUTCOME_SUCCEEDED", "startedAt": "2026-01-01T00:00:00Z", "duration": "1.5s"});
    let steps: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("step-{i}"), "outcome": "STEP_OUTCOME_PASSED", "detail": "ok"}))
        .collect();
    let drill = json!({"eventId": "drill-1", "region": "local", "scenario": "primary-db-loss", "startedAt": "2026-01-01T00:00:00Z", "failoverCompletedAt": "2026-01-01T00:00:05Z", "restoredAt": "2026-01-01T00:00:10Z", "lastDurableWriteAt": "2026-01-01T00:00:00Z", "steps": steps});
    let rows: Vec<Value> = (0..600)
        .map(|i| json!({"id": i, "name": format!("row {i}"), "score": 0.25 * f64::from(i), "tags": ["a", "b"], "ok": i % 2 == 0}))
        .collect();
    let many = json!({"environment": "production", "input": {"rows": rows}});
    let wide: serde_json::Map<String, Value> = (0..2000).map(|i| (format!("key-{i:05}"), json!(i))).collect();
    let wide = json!({"environment": "production", "input": wide});
    vec![
        ("capsule_run", run.to_string().into_bytes()),
        ("drill_20_steps", drill.to_string().into_bytes()),
        ("struct_600_objects", many.to_string().into_bytes()),
        ("struct_2000_members", wide.to_string().into_bytes()),
    ]
}

fn parse(c: &mut Criterion) {
    for (name, body) in bodies() {
        let mut group = c.benchmark_group(format!("parse/{name}_{}B", body.len()));
        group.bench_function("serde_json_from_slice", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap());
        });
        group.bench_function("parse_json_strict", |b| {
            b.iter(|| transcode::parse_json(black_box(&body)).unwrap());
        });
        group.finish();
    }
}

fn to_message(c: &mut Criterion) {
    let table = RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).unwrap();
    let bodies = bodies();
    let cases = [
        ("capsule_run", "/v1/capsule-runs", &bodies[0].1),
        ("drill_20_steps", "/v1/drills/disaster", &bodies[1].1),
        ("struct_600_objects", "/v1/capsules/cap-1:run", &bodies[2].1),
    ];
    let mut group = c.benchmark_group("json_to_message");
    for (name, path, body) in cases {
        let desc = input(&table, path);
        let value = transcode::parse_json(body).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| transcode::json_to_message(black_box(&desc), black_box(&value)).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, parse, to_message);
criterion_main!(benches);
