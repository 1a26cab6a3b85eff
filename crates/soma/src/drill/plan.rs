//! A drill's plan: a versioned JSON document naming the drill's targets for
//! RTO and RPO, its load, its timeout, its steps and the services it checks
//! once the stack has recovered.
//!
//! A plan has two sources, read by the same checks: a file
//! (`soma drill run --plan FILE`, e.g. `scripts/ops/dr_failover_drill.plan.json`),
//! and the `parameters` of the installed capsule `dr_failover_drill`
//! (`soma drill run --capsule NAME`, see [`super::capsule`]), which are the
//! plan as it was attested, reviewed and installed. A flag given on the
//! command line overrides the plan's value, and without a plan the drill
//! runs from its flags and their defaults alone. A plan is read strictly:
//! its `version` first (only [`VERSION`] is understood, so a newer plan is
//! refused rather than half-read), then every field, an unknown one
//! refused; a refusal names the source and the field (a bad `--plan` file
//! is a usage error, exit 64).
//!
//! ```json
//! {
//!   "version": 1,
//!   "name": "dr_failover_drill",
//!   "description": "...",
//!   "targets": {"rto": "15s", "rpo_events": 0},
//!   "load": {"writers": 4, "before": 40, "after": 40},
//!   "timeout": "120s",
//!   "steps": ["load", "kill", "recovery", "rpo", "ledger", "services"],
//!   "services": ["gateway", "tool-registry", "capsule-repo", "analytics"]
//! }
//! ```
//!
//! `steps` lists the drill's steps in their order: `load`, `kill`,
//! `recovery` and `rpo` always run (they measure the drill) and must be
//! listed; `ledger` and `services` are the checks after recovery, and a
//! plan that leaves one out has it recorded as skipped. `services` names
//! the services whose readiness (`/readyz` on their admin listener) the
//! `services` step checks.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use soma_mesh::ServiceKind;

use super::DrillArgs;

/// The plan format this `soma` reads.
pub const VERSION: u64 = 1;

/// Largest plan file read.
const MAX_PLAN_BYTES: u64 = 64 * 1024;

/// The drill's steps, in the order they run.
const STEPS: [&str; 6] = ["load", "kill", "recovery", "rpo", "ledger", "services"];
/// The steps a plan cannot leave out: they are the measurement.
const REQUIRED_STEPS: [&str; 4] = ["load", "kill", "recovery", "rpo"];

/// What the drill checks after recovery, and the plan it follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Whether the `ledger` step runs.
    pub ledger: bool,
    /// The services whose readiness the `services` step checks; empty:
    /// the step is skipped.
    pub services: Vec<ServiceKind>,
    /// `name vVERSION` of the plan followed, if any.
    pub plan: Option<String>,
}

impl Default for Checks {
    /// Without a plan: every check, every service.
    fn default() -> Self {
        Self {
            ledger: true,
            services: vec![
                ServiceKind::Gateway,
                ServiceKind::ToolRegistry,
                ServiceKind::CapsuleRepo,
                ServiceKind::Analytics,
            ],
            plan: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[expect(dead_code, reason = "read and checked before the strict parse")]
    version: u64,
    name: String,
    #[serde(default)]
    #[expect(dead_code, reason = "for the reader of the plan")]
    description: String,
    targets: Targets,
    #[serde(default)]
    load: Load,
    timeout: Option<String>,
    steps: Vec<String>,
    services: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Targets {
    /// Longest acceptable RTO (`15s`, `500ms`).
    rto: String,
    /// Most acknowledged events that may be lost.
    rpo_events: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Load {
    writers: Option<usize>,
    before: Option<usize>,
    after: Option<usize>,
}

/// Applies `args.plan` (when given) to `args`: each value the command line
/// did not give (`args.given`) is taken from the plan, and the plan's steps
/// and services become `args.checks`. `Err`: why the plan is refused.
pub fn apply(args: &mut DrillArgs) -> Result<(), String> {
    let Some(path) = args.plan.clone() else {
        return Ok(());
    };
    let bad = |why: String| format!("--plan {}: {why}", path.display());
    let plan = read(&path).map_err(bad)?;
    apply_plan(args, &plan).map_err(bad)
}

/// Applies a plan held as a JSON value to `args`, as [`apply`] applies a
/// file, after the same checks; `source` names where it came from in a
/// refusal (`--capsule dr_failover_drill (production)`). `Err`: why the
/// plan is refused, naming the source and the field.
pub fn apply_value(args: &mut DrillArgs, value: Value, source: &str) -> Result<(), String> {
    let bad = |why: String| format!("{source}: {why}");
    let plan = parse(value).map_err(bad)?;
    apply_plan(args, &plan).map_err(bad)
}

/// `value` with each number that is a whole double written as an integer:
/// proto3 JSON carries a `google.protobuf.Struct`'s numbers (a capsule's
/// parameters, a run's output) as doubles, so the plan's `"version": 1`
/// comes back as `1.0`. A number with a fraction, or out of the range where
/// a double is exact (2^53), is left as it is, and the plan's checks refuse
/// it where an integer is expected.
pub fn integral_numbers(value: Value) -> Value {
    /// 2^53: every integer up to it is exact as a double.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) if !n.is_u64() && !n.is_i64() => match n.as_f64() {
            // A whole double within ±2^53 is exactly the integer the casts
            // give: nothing is truncated or rounded.
            Some(f) if f.fract() == 0.0 && (0.0..=EXACT).contains(&f) => Value::from(f as u64),
            Some(f) if f.fract() == 0.0 && (-EXACT..0.0).contains(&f) => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integral_numbers).collect()),
        Value::Object(members) => Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k, integral_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Applies a checked plan's values to `args` (those the command line did
/// not give) and its steps and services.
fn apply_plan(args: &mut DrillArgs, plan: &PlanFile) -> Result<(), String> {
    let given = |id: &str| args.given.contains(id);

    let rto = crate::parse_target(&plan.targets.rto)
        .map_err(|e| format!("targets.rto {:?}: {e}", plan.targets.rto))?;
    if !given("rto_target") {
        args.rto_target = rto;
    }
    if !given("rpo_target") {
        args.rpo_target = plan.targets.rpo_events;
    }
    for (id, value, slot) in [
        ("writers", plan.load.writers, &mut args.writers),
        ("before", plan.load.before, &mut args.before),
        ("after", plan.load.after, &mut args.after),
    ] {
        if let Some(value) = value {
            if value == 0 {
                return Err(format!("load.{id} must be at least 1"));
            }
            if !given(id) {
                *slot = value;
            }
        }
    }
    if let Some(timeout) = &plan.timeout {
        let parsed = crate::parse_duration(timeout).map_err(|e| format!("timeout {timeout:?}: {e}"))?;
        if !given("timeout") {
            args.timeout = parsed;
        }
    }
    args.checks = checks(plan)?;
    Ok(())
}

/// Reads and checks a plan file: its version first, then every field.
fn read(path: &Path) -> Result<PlanFile, String> {
    let bytes = crate::cli::read_limited(path, MAX_PLAN_BYTES).map_err(|e| format!("{e:#}"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    parse(value)
}

/// Checks a plan held as a JSON value: its version first, then every field.
fn parse(value: Value) -> Result<PlanFile, String> {
    if !value.is_object() {
        return Err("not a JSON object".to_owned());
    }
    match value.get("version") {
        None => {
            return Err("no version: a plan names the format it is written in (\"version\": 1)".to_owned());
        }
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "version {v} is not supported: this soma reads plans of version {VERSION}"
            ));
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The plan's name, steps and services, checked.
fn checks(plan: &PlanFile) -> Result<Checks, String> {
    let name = &plan.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!("name {name:?}: 1 to 64 letters, digits, '_', '-' or '.'"));
    }
    let mut seen = BTreeSet::new();
    let mut last = None;
    for step in &plan.steps {
        let Some(position) = STEPS.iter().position(|s| s == step) else {
            return Err(format!(
                "steps: unknown step {step:?} (the steps are {})",
                STEPS.join(", ")
            ));
        };
        if !seen.insert(step.as_str()) {
            return Err(format!("steps: {step:?} is listed twice"));
        }
        if last.is_some_and(|l| position < l) {
            return Err(format!(
                "steps: {step:?} is out of order (the order is {})",
                STEPS.join(", ")
            ));
        }
        last = Some(position);
    }
    if let Some(missing) = REQUIRED_STEPS.iter().find(|s| !seen.contains(**s)) {
        return Err(format!(
            "steps: {missing:?} is missing ({} measure the drill and always run)",
            REQUIRED_STEPS.join(", ")
        ));
    }
    let mut services = Vec::new();
    for service in &plan.services {
        let kind: ServiceKind = service.parse().map_err(|_| {
            format!(
                "services: unknown service {service:?} (gateway, tool-registry, capsule-repo or analytics)"
            )
        })?;
        if services.contains(&kind) {
            return Err(format!("services: {service:?} is listed twice"));
        }
        services.push(kind);
    }
    let checks_services = seen.contains("services");
    if checks_services && services.is_empty() {
        return Err("services: the services step needs at least one service to check".to_owned());
    }
    Ok(Checks {
        ledger: seen.contains("ledger"),
        services: if checks_services { services } else { Vec::new() },
        plan: Some(format!("{name} v{VERSION}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_text(edit: impl FnOnce(&mut Value)) -> String {
        let mut plan: Value = serde_json::from_str(include_str!(
            "../../../../scripts/ops/dr_failover_drill.plan.json"
        ))
        .unwrap();
        edit(&mut plan);
        plan.to_string()
    }

    fn parse(text: &str) -> Result<Checks, String> {
        let dir = std::env::temp_dir().join(format!("soma-plan-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plan.json");
        std::fs::write(&path, text).unwrap();
        let result = read(&path).and_then(|p| checks(&p));
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn the_repository_plan_is_valid_and_checks_everything() {
        let checks = parse(&plan_text(|_| {})).unwrap();
        assert!(checks.ledger);
        assert_eq!(checks.services.len(), 4);
        assert_eq!(checks.plan.as_deref(), Some("dr_failover_drill v1"));
    }

    #[test]
    fn bad_plans_are_refused_naming_the_field() {
        struct Case {
            name: &'static str,
            edit: fn(&mut Value),
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "a newer version",
                edit: |p| p["version"] = 2.into(),
                expected: "version 2 is not supported",
            },
            Case {
                name: "no version",
                edit: |p| {
                    p.as_object_mut().unwrap().remove("version");
                },
                expected: "no version",
            },
            Case {
                name: "version as a string",
                edit: |p| p["version"] = "1".into(),
                expected: "version \"1\" is not supported",
            },
            Case {
                name: "an unknown field",
                edit: |p| p["rto"] = "15s".into(),
                expected: "unknown field `rto`",
            },
            Case {
                name: "an unknown target",
                edit: |p| p["targets"]["rpo"] = "0s".into(),
                expected: "unknown field `rpo`",
            },
            Case {
                name: "an unknown step",
                edit: |p| p["steps"].as_array_mut().unwrap().push("dns".into()),
                expected: "steps: unknown step \"dns\"",
            },
            Case {
                name: "a required step left out",
                edit: |p| p["steps"] = serde_json::json!(["load", "kill", "recovery"]),
                expected: "steps: \"rpo\" is missing",
            },
            Case {
                name: "steps out of order",
                edit: |p| p["steps"] = serde_json::json!(["kill", "load", "recovery", "rpo"]),
                expected: "steps: \"load\" is out of order",
            },
            Case {
                name: "an unknown service",
                edit: |p| p["services"] = serde_json::json!(["gateway", "dns"]),
                expected: "services: unknown service \"dns\"",
            },
            Case {
                name: "a bad name",
                edit: |p| p["name"] = "dr drill".into(),
                expected: "name \"dr drill\"",
            },
        ];
        for case in cases {
            let err = parse(&plan_text(case.edit)).unwrap_err();
            assert!(err.starts_with(case.expected), "{}: {err}", case.name);
        }
        assert!(parse("{").unwrap_err().starts_with("not JSON"));
    }

    #[test]
    fn a_plan_without_the_optional_checks_skips_them() {
        let checks = parse(&plan_text(|p| {
            p["steps"] = serde_json::json!(["load", "kill", "recovery", "rpo"]);
        }))
        .unwrap();
        assert!(!checks.ledger);
        assert!(checks.services.is_empty());
    }

    /// The repository's capsule bundle, parsed as CapsuleRepo parses it.
    fn repository_bundle() -> soma_capsule::Bundle {
        soma_capsule::Bundle::parse(include_bytes!(
            "../../../../scripts/ops/dr_failover_drill.capsule.json"
        ))
        .unwrap()
    }

    #[test]
    fn the_capsules_parameters_are_the_repository_plan_and_its_tool_the_echo_module() {
        let bundle = repository_bundle();
        assert_eq!(bundle.name(), "dr_failover_drill");
        let plan: Value = serde_json::from_str(include_str!(
            "../../../../scripts/ops/dr_failover_drill.plan.json"
        ))
        .unwrap();
        // (The bundle holds its numbers as RFC 8785 does: doubles.)
        assert_eq!(
            integral_numbers(Value::Object(bundle.parameters().clone())),
            plan,
            "the capsule's plan and the plan file must be the same plan"
        );
        // The one step: the drill-plan release of the manifest, whose module
        // is the echo adapter compiled as `soma release sign` compiles it.
        let manifest: Value =
            serde_json::from_str(include_str!("../../../../scripts/ops/drill-plan.manifest.json")).unwrap();
        let [tool] = bundle.tools() else {
            panic!("one tool step: {:?}", bundle.tools());
        };
        assert_eq!(tool.tool, manifest["tool"].as_str().unwrap());
        assert_eq!(tool.version.as_str(), manifest["version"].as_str().unwrap());
        let module = wat::parse_str(soma_sandbox::adapter_wat("echo").unwrap()).unwrap();
        assert_eq!(
            tool.module_sha256,
            soma_sign::sha256(&module),
            "the bundle pins another module than the echo adapter"
        );
        // No input: nothing at run time can change the approved plan.
        assert_eq!(
            Value::Object(bundle.input_schema().clone()),
            serde_json::json!({"additionalProperties": false, "properties": {}, "type": "object"})
        );
    }

    #[test]
    fn a_plan_as_a_run_answers_it_passes_the_same_checks_as_the_file() {
        // proto3 JSON carries a Struct's numbers as doubles.
        let mut answered = serde_json::json!({
            "version": 1.0, "name": "dr_failover_drill",
            "targets": {"rto": "1ms", "rpo_events": 0.0},
            "load": {"writers": 2.0, "before": 10.0, "after": 10.0},
            "timeout": "60s",
            "steps": ["load", "kill", "recovery", "rpo"],
            "services": []
        });
        let checked = super::parse(integral_numbers(answered.clone())).and_then(|p| checks(&p));
        let checks = checked.unwrap();
        assert_eq!(checks.plan.as_deref(), Some("dr_failover_drill v1"));
        assert!(!checks.ledger);
        // Left as doubles, the very same checks refuse it: the conversion is
        // what makes the capsule's plan the file's plan.
        assert!(
            super::parse(answered.clone())
                .unwrap_err()
                .contains("version 1.0 is not supported")
        );
        // A fraction or a negative count stays refused, naming the field.
        answered["load"]["writers"] = serde_json::json!(2.5);
        let err = super::parse(integral_numbers(answered.clone())).unwrap_err();
        assert!(err.contains("invalid type: floating point `2.5`"), "{err}");
        answered["load"]["writers"] = serde_json::json!(-2.0);
        let err = super::parse(integral_numbers(answered.clone())).unwrap_err();
        assert!(err.contains("invalid value: integer `-2`"), "{err}");
        assert_eq!(
            integral_numbers(serde_json::json!(1e300)),
            serde_json::json!(1e300)
        );
        assert_eq!(
            integral_numbers(serde_json::json!([3.0, "3.0"])),
            serde_json::json!([3, "3.0"])
        );
        // Not an object at all.
        assert_eq!(
            super::parse(serde_json::json!([1])).unwrap_err(),
            "not a JSON object"
        );
    }
}
