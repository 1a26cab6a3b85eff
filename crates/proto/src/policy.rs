//! Method policies read from the descriptor set.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, ExtensionDescriptor};

use crate::v1::MethodPolicy as PolicyProto;

/// Full name of the policy extension.
const POLICY_EXTENSION: &str = "somastack.v1.policy";

static POOL: LazyLock<Result<DescriptorPool, prost_reflect::DescriptorError>> =
    LazyLock::new(|| DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET));

/// Why the policy table could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The embedded descriptor set did not decode (a build defect).
    #[error("embedded descriptor set does not decode: {0}")]
    Descriptor(String),
    /// The policy extension is missing from the descriptor set (a build defect).
    #[error("descriptor set has no {POLICY_EXTENSION} extension")]
    MissingExtension,
    /// The named service is not in the descriptor set.
    #[error("unknown service {0}")]
    UnknownService(String),
    /// A policy option did not decode into `MethodPolicy`.
    #[error("policy of {method} does not decode: {reason}")]
    BadPolicy {
        /// The method.
        method: String,
        /// The decode error.
        reason: String,
    },
    /// An `allowed_callers` entry is not an exact path or a `/prefix/*` pattern.
    #[error("policy of {method} has an invalid caller pattern {pattern:?}")]
    BadCallerPattern {
        /// The method.
        method: String,
        /// The pattern.
        pattern: String,
    },
}

/// The decoded descriptor pool of [`crate::FILE_DESCRIPTOR_SET`].
pub fn descriptor_pool() -> Result<&'static DescriptorPool, PolicyError> {
    POOL.as_ref().map_err(|e| PolicyError::Descriptor(e.to_string()))
}

/// The policy of one method, with its caller patterns checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodPolicy {
    /// `/package.Service/Method`.
    pub path: String,
    /// Capability a tenant needs; empty when tenants may not call it.
    pub capability: String,
    /// Whether MFA is required.
    pub mfa_required: bool,
    /// Caller path patterns (exact, or `/prefix/*`).
    pub allowed_callers: Vec<String>,
    /// Whether the method changes no state.
    pub read_only: bool,
    /// Whether requests pass moderation.
    pub moderate: bool,
}

impl MethodPolicy {
    /// Whether a caller with this SPIFFE ID path (the trust domain having
    /// been checked already) may call the method over mTLS.
    pub fn allows_path(&self, caller_path: &str) -> bool {
        self.allowed_callers
            .iter()
            .any(|p| pattern_matches(p, caller_path))
    }
}

/// Whether `pattern` (exact path or `/prefix/*`) matches `path`.
///
/// `/operator/*` matches `/operator/alice` and `/operator/a/b`, never
/// `/operator` itself nor `/operatorx/alice`.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
        None => pattern == path,
    }
}

fn valid_pattern(pattern: &str) -> bool {
    let body = pattern.strip_suffix("/*").unwrap_or(pattern);
    body.starts_with('/')
        && body[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
}

/// Every method policy of some services, by `/package.Service/Method` path.
/// Methods without a policy option are absent: deny.
#[derive(Clone, Debug, Default)]
pub struct PolicyTable {
    by_path: HashMap<String, MethodPolicy>,
}

impl PolicyTable {
    /// Reads the policies of the named services from the descriptor set.
    pub fn for_services(services: &[&str]) -> Result<Self, PolicyError> {
        let pool = descriptor_pool()?;
        let ext = pool
            .get_extension_by_name(POLICY_EXTENSION)
            .ok_or(PolicyError::MissingExtension)?;
        let mut by_path = HashMap::new();
        for name in services {
            let service = pool
                .get_service_by_name(name)
                .ok_or_else(|| PolicyError::UnknownService((*name).to_owned()))?;
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                if let Some(policy) = read_policy(&method, &ext, &path)? {
                    by_path.insert(path, policy);
                }
            }
        }
        Ok(Self { by_path })
    }

    /// Adds a policy that is not declared in the descriptor set (health,
    /// reflection).
    pub fn insert(&mut self, policy: MethodPolicy) {
        self.by_path.insert(policy.path.clone(), policy);
    }

    /// The policy of a method path, if it has one.
    pub fn get(&self, path: &str) -> Option<&MethodPolicy> {
        self.by_path.get(path)
    }

    /// Every policy.
    pub fn iter(&self) -> impl Iterator<Item = &MethodPolicy> {
        self.by_path.values()
    }
}

fn read_policy(
    method: &prost_reflect::MethodDescriptor,
    ext: &ExtensionDescriptor,
    path: &str,
) -> Result<Option<MethodPolicy>, PolicyError> {
    let options = method.options();
    if !options.has_extension(ext) {
        return Ok(None);
    }
    let value = options.get_extension(ext);
    let Some(message) = value.as_message() else {
        return Err(PolicyError::BadPolicy {
            method: path.to_owned(),
            reason: "not a message".to_owned(),
        });
    };
    let proto: PolicyProto = message.transcode_to().map_err(|e| PolicyError::BadPolicy {
        method: path.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(bad) = proto.allowed_callers.iter().find(|p| !valid_pattern(p)) {
        return Err(PolicyError::BadCallerPattern {
            method: path.to_owned(),
            pattern: bad.clone(),
        });
    }
    Ok(Some(MethodPolicy {
        path: path.to_owned(),
        capability: proto.capability,
        mfa_required: proto.mfa_required,
        allowed_callers: proto.allowed_callers,
        read_only: proto.read_only,
        moderate: proto.moderate,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_paths_and_strict_prefixes() {
        struct Case {
            pattern: &'static str,
            path: &'static str,
            expected: bool,
        }
        let cases = [
            Case {
                pattern: "/svc/gateway",
                path: "/svc/gateway",
                expected: true,
            },
            Case {
                pattern: "/svc/gateway",
                path: "/svc/gateway2",
                expected: false,
            },
            Case {
                pattern: "/svc/gateway",
                path: "/svc/gateway/x",
                expected: false,
            },
            Case {
                pattern: "/operator/*",
                path: "/operator/alice",
                expected: true,
            },
            Case {
                pattern: "/operator/*",
                path: "/operator/a/b",
                expected: true,
            },
            Case {
                pattern: "/operator/*",
                path: "/operator",
                expected: false,
            },
            Case {
                pattern: "/operator/*",
                path: "/operator/",
                expected: false,
            },
            Case {
                pattern: "/operator/*",
                path: "/operatorx/alice",
                expected: false,
            },
        ];
        for c in cases {
            assert_eq!(
                pattern_matches(c.pattern, c.path),
                c.expected,
                "{} vs {}",
                c.pattern,
                c.path
            );
        }
    }

    /// Methods only services call, which the edge must never route: no
    /// HTTP rule.
    const MESH_ONLY: [&str; 2] = [
        "/somastack.v1.CapsuleRepo/ResolveCapsuleRun",
        "/somastack.v1.ToolRegistry/ExecuteCapsuleStep",
    ];

    #[test]
    fn every_rpc_of_the_four_services_has_a_policy_and_an_http_rule_but_the_mesh_only_ones() {
        let table = PolicyTable::for_services(&crate::SERVICE_NAMES).unwrap();
        let pool = descriptor_pool().unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        for name in crate::SERVICE_NAMES {
            for method in pool.get_service_by_name(name).unwrap().methods() {
                let path = format!("/{}/{}", name, method.name());
                assert!(table.get(&path).is_some(), "{path} has no policy");
                assert_eq!(
                    method.options().has_extension(&http),
                    !MESH_ONLY.contains(&path.as_str()),
                    "{path}: google.api.http"
                );
            }
        }
    }

    #[test]
    fn seed_routes_are_declared() {
        let pool = descriptor_pool().unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        let mut routes = Vec::new();
        for name in crate::SERVICE_NAMES {
            for method in pool.get_service_by_name(name).unwrap().methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule = options.get_extension(&http);
                let rule: crate::google::api::HttpRule = rule.as_message().unwrap().transcode_to().unwrap();
                use crate::google::api::http_rule::Pattern;
                let route = match rule.pattern.unwrap() {
                    Pattern::Get(p) => format!("GET {p}"),
                    Pattern::Post(p) => format!("POST {p}"),
                    Pattern::Put(p) => format!("PUT {p}"),
                    Pattern::Delete(p) => format!("DELETE {p}"),
                    Pattern::Patch(p) => format!("PATCH {p}"),
                    Pattern::Custom(c) => format!("{} {}", c.kind, c.path),
                };
                routes.push(route);
            }
        }
        for seed in [
            "POST /v1/submissions",
            "GET /v1/installations",
            "POST /v1/installations",
            "GET /v1/exports/capsule-runs",
            "GET /v1/exports/billing-ledger",
            "POST /v1/persona-regressions/transition",
            "POST /v1/anomalies/scan",
            "POST /v1/drills/disaster",
            "GET /v1/drills/disaster/summary",
        ] {
            assert!(routes.iter().any(|r| r == seed), "missing route {seed}");
        }
    }
}
