//! The route table built from the real descriptors: every route of the four
//! services, hostile paths, and parameter binding with proto3 JSON semantics.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use http::Method;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage as _};
use soma_gateway::routes::{RouteBody, RouteMatch, RouteTable, bind_params, parse_query};

fn table() -> RouteTable {
    RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).expect("route table builds")
}

fn message(name: &str) -> DynamicMessage {
    let pool = soma_proto::descriptor_pool().unwrap();
    let desc: MessageDescriptor = pool
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("no {name}"));
    DynamicMessage::new(desc)
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// One row per RPC, typed from the protos: method, template, a concrete
/// request path, gRPC path, body, expected path parameters, streaming.
struct Row {
    http: Method,
    template: &'static str,
    path: &'static str,
    grpc: &'static str,
    body: RouteBody,
    params: &'static [(&'static str, &'static str)],
    streaming: bool,
}

fn row(
    http: Method,
    template: &'static str,
    path: &'static str,
    grpc: &'static str,
    body: RouteBody,
    params: &'static [(&'static str, &'static str)],
) -> Row {
    Row {
        http,
        template,
        path,
        grpc,
        body,
        params,
        streaming: false,
    }
}

fn every_route() -> Vec<Row> {
    use RouteBody::{None as NoBody, Whole};
    let get = || Method::GET;
    let post = || Method::POST;
    vec![
        // Gateway
        row(
            get(),
            "/v1/whoami",
            "/v1/whoami",
            "/somastack.v1.Gateway/WhoAmI",
            NoBody,
            &[],
        ),
        row(
            post(),
            "/v1/capsules/{capsule_id}:run",
            "/v1/capsules/cap-1:run",
            "/somastack.v1.Gateway/RunCapsule",
            Whole,
            &[("capsule_id", "cap-1")],
        ),
        row(
            get(),
            "/v1/kill-switches",
            "/v1/kill-switches",
            "/somastack.v1.Gateway/ListKillSwitches",
            NoBody,
            &[],
        ),
        row(
            post(),
            "/v1/kill-switches",
            "/v1/kill-switches",
            "/somastack.v1.Gateway/SetKillSwitch",
            Whole,
            &[],
        ),
        // ToolRegistry
        row(
            post(),
            "/v1/tools/{tool}/releases",
            "/v1/tools/pdf-reader/releases",
            "/somastack.v1.ToolRegistry/PublishRelease",
            Whole,
            &[("tool", "pdf-reader")],
        ),
        row(
            get(),
            "/v1/tools/{tool}/releases/{version}",
            "/v1/tools/pdf-reader/releases/1.2.3",
            "/somastack.v1.ToolRegistry/GetRelease",
            NoBody,
            &[("tool", "pdf-reader"), ("version", "1.2.3")],
        ),
        row(
            get(),
            "/v1/tools/{tool}/releases",
            "/v1/tools/pdf-reader/releases",
            "/somastack.v1.ToolRegistry/ListReleases",
            NoBody,
            &[("tool", "pdf-reader")],
        ),
        row(
            post(),
            "/v1/tools/{tool}/releases/{version}:verify",
            "/v1/tools/pdf-reader/releases/1.2.3:verify",
            "/somastack.v1.ToolRegistry/VerifyRelease",
            Whole,
            &[("tool", "pdf-reader"), ("version", "1.2.3")],
        ),
        row(
            post(),
            "/v1/tools/{tool}/releases/{version}:revoke",
            "/v1/tools/pdf-reader/releases/1.2.3:revoke",
            "/somastack.v1.ToolRegistry/RevokeRelease",
            Whole,
            &[("tool", "pdf-reader"), ("version", "1.2.3")],
        ),
        row(
            post(),
            "/v1/tools/{tool}:execute",
            "/v1/tools/pdf-reader:execute",
            "/somastack.v1.ToolRegistry/ExecuteTool",
            RouteBody::Field("input".to_owned()),
            &[("tool", "pdf-reader")],
        ),
        row(
            post(),
            "/v1/publisher-keys",
            "/v1/publisher-keys",
            "/somastack.v1.ToolRegistry/AddPublisherKey",
            Whole,
            &[],
        ),
        row(
            get(),
            "/v1/publisher-keys",
            "/v1/publisher-keys",
            "/somastack.v1.ToolRegistry/ListPublisherKeys",
            NoBody,
            &[],
        ),
        row(
            post(),
            "/v1/publisher-keys/{key_id}:retire",
            "/v1/publisher-keys/0123abcd:retire",
            "/somastack.v1.ToolRegistry/RetirePublisherKey",
            Whole,
            &[("key_id", "0123abcd")],
        ),
        // CapsuleRepo
        row(
            post(),
            "/v1/submissions",
            "/v1/submissions",
            "/somastack.v1.CapsuleRepo/SubmitCapsule",
            Whole,
            &[],
        ),
        row(
            get(),
            "/v1/submissions/{submission_id}",
            "/v1/submissions/sub-9",
            "/somastack.v1.CapsuleRepo/GetSubmission",
            NoBody,
            &[("submission_id", "sub-9")],
        ),
        row(
            get(),
            "/v1/submissions",
            "/v1/submissions",
            "/somastack.v1.CapsuleRepo/ListSubmissions",
            NoBody,
            &[],
        ),
        row(
            post(),
            "/v1/submissions/{submission_id}:review",
            "/v1/submissions/sub-9:review",
            "/somastack.v1.CapsuleRepo/ReviewSubmission",
            Whole,
            &[("submission_id", "sub-9")],
        ),
        row(
            get(),
            "/v1/submissions/{submission_id}/reviews",
            "/v1/submissions/sub-9/reviews",
            "/somastack.v1.CapsuleRepo/ListReviewHistory",
            NoBody,
            &[("submission_id", "sub-9")],
        ),
        row(
            post(),
            "/v1/installations",
            "/v1/installations",
            "/somastack.v1.CapsuleRepo/CreateInstallation",
            Whole,
            &[],
        ),
        row(
            Method::PATCH,
            "/v1/installations/{installation_id}",
            "/v1/installations/inst-4",
            "/somastack.v1.CapsuleRepo/UpdateInstallation",
            Whole,
            &[("installation_id", "inst-4")],
        ),
        row(
            get(),
            "/v1/installations",
            "/v1/installations",
            "/somastack.v1.CapsuleRepo/ListInstallations",
            NoBody,
            &[],
        ),
        row(
            post(),
            "/v1/installations/{installation_id}:rollback",
            "/v1/installations/inst-4:rollback",
            "/somastack.v1.CapsuleRepo/RollbackInstallation",
            Whole,
            &[("installation_id", "inst-4")],
        ),
        row(
            post(),
            "/v1/templates:import",
            "/v1/templates:import",
            "/somastack.v1.CapsuleRepo/ImportTemplate",
            Whole,
            &[],
        ),
        row(
            post(),
            "/v1/publisher-thresholds",
            "/v1/publisher-thresholds",
            "/somastack.v1.CapsuleRepo/SetPublisherThreshold",
            Whole,
            &[],
        ),
        // Analytics
        row(
            post(),
            "/v1/capsule-runs",
            "/v1/capsule-runs",
            "/somastack.v1.Analytics/RecordCapsuleRun",
            Whole,
            &[],
        ),
        row(
            post(),
            "/v1/billing-events",
            "/v1/billing-events",
            "/somastack.v1.Analytics/RecordBillingEvent",
            Whole,
            &[],
        ),
        row(
            post(),
            "/v1/drills/disaster",
            "/v1/drills/disaster",
            "/somastack.v1.Analytics/RecordDisasterDrill",
            Whole,
            &[],
        ),
        row(
            get(),
            "/v1/drills/disaster/summary",
            "/v1/drills/disaster/summary",
            "/somastack.v1.Analytics/DisasterDrillSummary",
            NoBody,
            &[],
        ),
        Row {
            streaming: true,
            ..row(
                get(),
                "/v1/exports/capsule-runs",
                "/v1/exports/capsule-runs",
                "/somastack.v1.Analytics/ExportCapsuleRuns",
                NoBody,
                &[],
            )
        },
        Row {
            streaming: true,
            ..row(
                get(),
                "/v1/exports/billing-ledger",
                "/v1/exports/billing-ledger",
                "/somastack.v1.Analytics/ExportBillingLedger",
                NoBody,
                &[],
            )
        },
        row(
            post(),
            "/v1/audit-events",
            "/v1/audit-events",
            "/somastack.v1.Analytics/RecordAuditEvent",
            Whole,
            &[],
        ),
        Row {
            streaming: true,
            ..row(
                get(),
                "/v1/exports/audit-events",
                "/v1/exports/audit-events",
                "/somastack.v1.Analytics/ExportAuditEvents",
                NoBody,
                &[],
            )
        },
        row(
            get(),
            "/v1/exports/keys",
            "/v1/exports/keys",
            "/somastack.v1.Analytics/ListVerificationKeys",
            NoBody,
            &[],
        ),
        row(
            post(),
            "/v1/persona-regressions/transition",
            "/v1/persona-regressions/transition",
            "/somastack.v1.Analytics/TransitionPersonaRegression",
            Whole,
            &[],
        ),
        row(
            post(),
            "/v1/anomalies/scan",
            "/v1/anomalies/scan",
            "/somastack.v1.Analytics/ScanAnomalies",
            Whole,
            &[],
        ),
        row(
            get(),
            "/v1/ledger/checkpoint",
            "/v1/ledger/checkpoint",
            "/somastack.v1.Analytics/LedgerCheckpoint",
            NoBody,
            &[],
        ),
        row(
            get(),
            "/v1/ledger/inclusion-proof",
            "/v1/ledger/inclusion-proof",
            "/somastack.v1.Analytics/InclusionProof",
            NoBody,
            &[],
        ),
        row(
            get(),
            "/v1/ledger/consistency-proof",
            "/v1/ledger/consistency-proof",
            "/somastack.v1.Analytics/ConsistencyProof",
            NoBody,
            &[],
        ),
        row(
            post(),
            "/v1/admin/store:verify",
            "/v1/admin/store:verify",
            "/somastack.v1.Analytics/VerifyStore",
            Whole,
            &[],
        ),
    ]
}

#[test]
fn every_rpc_of_the_four_services_has_exactly_its_declared_route() {
    let table = table();
    let rows = every_route();
    assert_eq!(table.len(), rows.len(), "one route per RPC, no more");
    for r in &rows {
        let route = table
            .by_grpc_path(r.grpc)
            .unwrap_or_else(|| panic!("{} has no route", r.grpc));
        assert_eq!(route.http_method, r.http, "{}", r.grpc);
        assert_eq!(route.template, r.template, "{}", r.grpc);
        assert_eq!(route.body, r.body, "{}", r.grpc);
        assert_eq!(route.server_streaming, r.streaming, "{}", r.grpc);
        let expected_fields: Vec<&str> = r.params.iter().map(|(f, _)| *f).collect();
        assert_eq!(route.path_fields, expected_fields, "{}", r.grpc);
        let (service, name) = r.grpc[1..].split_once('/').unwrap();
        assert_eq!(route.service, service);
        assert_eq!(route.method.name(), name);
        assert!(route.policy.is_some(), "{} has a policy", r.grpc);
        assert_eq!(route.policy.as_ref().unwrap().path, r.grpc);

        match table.find(&r.http, r.path) {
            RouteMatch::Found { route, path_params } => {
                assert_eq!(route.grpc_path, r.grpc, "{} {}", r.http, r.path);
                assert_eq!(path_params, params(r.params), "{} {}", r.http, r.path);
            }
            other => panic!("{} {} did not match: {other:?}", r.http, r.path),
        }
    }
}

#[test]
fn policies_ride_along_with_the_route() {
    let table = table();
    let review = table
        .by_grpc_path("/somastack.v1.CapsuleRepo/ReviewSubmission")
        .unwrap();
    let policy = review.policy.as_ref().unwrap();
    assert_eq!(policy.capability, "capsules:review");
    assert!(policy.mfa_required);
    let get = table
        .by_grpc_path("/somastack.v1.CapsuleRepo/GetSubmission")
        .unwrap();
    let policy = get.policy.as_ref().unwrap();
    assert_eq!(policy.capability, "capsules:read");
    assert!(!policy.mfa_required);
    assert!(policy.read_only);
}

#[test]
fn unknown_service_is_refused() {
    let err = RouteTable::from_descriptors(&["somastack.v1.Nope"]).unwrap_err();
    assert!(err.to_string().contains("somastack.v1.Nope"), "{err}");
}

#[test]
fn a_subset_of_services_gets_only_its_routes() {
    let table = RouteTable::from_descriptors(&["somastack.v1.Gateway"]).unwrap();
    assert_eq!(table.len(), 4);
    assert!(table.iter().all(|r| r.service == "somastack.v1.Gateway"));
    assert!(matches!(
        table.find(&Method::GET, "/v1/submissions"),
        RouteMatch::NotFound
    ));
}

#[derive(Debug)]
enum Expect {
    Found(&'static str, &'static [(&'static str, &'static str)]),
    NotAllowed(&'static [&'static str]),
    NotFound,
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    expected: Expect,
}

fn case(name: &'static str, method: Method, path: &str, expected: Expect) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        expected,
    }
}

#[test]
fn hostile_and_edge_paths_match_exactly_what_they_should() {
    use Expect::{Found, NotAllowed, NotFound};
    const GET_SUB: &str = "/somastack.v1.CapsuleRepo/GetSubmission";
    const REVIEW: &str = "/somastack.v1.CapsuleRepo/ReviewSubmission";
    let cases = vec![
        case("dot-dot segment", Method::GET, "/v1/submissions/..", NotFound),
        case("dot segment", Method::GET, "/v1/submissions/.", NotFound),
        case("encoded dot-dot", Method::GET, "/v1/submissions/%2e%2e", NotFound),
        case(
            "encoded dot-dot upper",
            Method::GET,
            "/v1/submissions/%2E%2E",
            NotFound,
        ),
        case("dot-dot mid path", Method::GET, "/v1/../v1/submissions", NotFound),
        case("double slash", Method::GET, "/v1//submissions", NotFound),
        case("leading double slash", Method::GET, "//v1/submissions", NotFound),
        case("trailing slash", Method::GET, "/v1/submissions/", NotFound),
        case(
            "trailing slash on id",
            Method::GET,
            "/v1/submissions/sub-1/",
            NotFound,
        ),
        case("root", Method::GET, "/", NotFound),
        case("empty", Method::GET, "", NotFound),
        case("no leading slash", Method::GET, "v1/submissions", NotFound),
        case("case differs", Method::GET, "/V1/submissions", NotFound),
        case("encoded literal", Method::GET, "/v1/%73ubmissions", NotFound),
        case("query left in", Method::GET, "/v1/whoami?x=1", NotFound),
        case(
            "encoded slash decoded in one-segment variable",
            Method::GET,
            "/v1/submissions/a%2Fb",
            Found(GET_SUB, &[("submission_id", "a/b")]),
        ),
        case(
            "encoded traversal inside a variable",
            Method::GET,
            "/v1/submissions/a%2F..%2Fb",
            NotFound,
        ),
        case("bad escape", Method::GET, "/v1/submissions/a%zz", NotFound),
        case("truncated escape", Method::GET, "/v1/submissions/a%4", NotFound),
        case("invalid utf-8", Method::GET, "/v1/submissions/%ff", NotFound),
        case("nul byte", Method::GET, "/v1/submissions/a%00b", NotFound),
        case("newline", Method::GET, "/v1/submissions/a%0Ab", NotFound),
        case(
            "utf-8 decoded",
            Method::GET,
            "/v1/submissions/caf%C3%A9",
            Found(GET_SUB, &[("submission_id", "café")]),
        ),
        case(
            "plus is not a space in a path",
            Method::GET,
            "/v1/submissions/a+b",
            Found(GET_SUB, &[("submission_id", "a+b")]),
        ),
        case(
            "encoded colon stays in the value",
            Method::GET,
            "/v1/submissions/urn%3Ax",
            Found(GET_SUB, &[("submission_id", "urn:x")]),
        ),
        case(
            "verb route",
            Method::POST,
            "/v1/submissions/s1:review",
            Found(REVIEW, &[("submission_id", "s1")]),
        ),
        case(
            "verb route with GET",
            Method::GET,
            "/v1/submissions/s1:review",
            NotAllowed(&["POST"]),
        ),
        case("wrong verb", Method::POST, "/v1/submissions/s1:approve", NotFound),
        case(
            "wrong verb with GET",
            Method::GET,
            "/v1/submissions/s1:approve",
            NotFound,
        ),
        case("empty verb", Method::POST, "/v1/submissions/s1:", NotFound),
        case(
            "verb without id",
            Method::POST,
            "/v1/submissions/:review",
            NotFound,
        ),
        case(
            "verb twice",
            Method::POST,
            "/v1/submissions/s1:review:review",
            Found(REVIEW, &[("submission_id", "s1:review")]),
        ),
        case(
            "literal verb",
            Method::POST,
            "/v1/admin/store:verify",
            Found("/somastack.v1.Analytics/VerifyStore", &[]),
        ),
        case("literal verb missing", Method::POST, "/v1/admin/store", NotFound),
        case(
            "literal verb repeated",
            Method::POST,
            "/v1/admin/store:verify:verify",
            NotFound,
        ),
        case(
            "encoded verb colon",
            Method::POST,
            "/v1/templates%3Aimport",
            NotFound,
        ),
        case(
            "verb on a segment not last",
            Method::POST,
            "/v1/templates:import/x",
            NotFound,
        ),
        case(
            "method not allowed lists both",
            Method::DELETE,
            "/v1/kill-switches",
            NotAllowed(&["GET", "POST"]),
        ),
        case(
            "method not allowed patch",
            Method::GET,
            "/v1/installations/i1",
            NotAllowed(&["PATCH"]),
        ),
        case(
            "HEAD is not GET",
            Method::HEAD,
            "/v1/whoami",
            NotAllowed(&["GET"]),
        ),
        case("extra segment", Method::GET, "/v1/whoami/x", NotFound),
        case(
            "most literal wins over the variable",
            Method::GET,
            "/v1/tools/t/releases",
            Found("/somastack.v1.ToolRegistry/ListReleases", &[("tool", "t")]),
        ),
        case(
            "dots inside a value are fine",
            Method::GET,
            "/v1/tools/t/releases/1.0.0",
            Found(
                "/somastack.v1.ToolRegistry/GetRelease",
                &[("tool", "t"), ("version", "1.0.0")],
            ),
        ),
        case(
            "overlong path",
            Method::GET,
            &format!("/v1/submissions/{}", "a".repeat(4096)),
            NotFound,
        ),
        case(
            "too many segments",
            Method::GET,
            &format!("/v1{}", "/a".repeat(100)),
            NotFound,
        ),
    ];
    let table = table();
    for c in cases {
        let got = table.find(&c.method, &c.path);
        match (&c.expected, &got) {
            (NotFound, RouteMatch::NotFound) => {}
            (NotAllowed(want), RouteMatch::MethodNotAllowed { allowed }) => {
                let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                assert_eq!(&allowed, want, "{}", c.name);
            }
            (Found(grpc, want), RouteMatch::Found { route, path_params }) => {
                assert_eq!(route.grpc_path, *grpc, "{}", c.name);
                assert_eq!(path_params, &params(want), "{}", c.name);
            }
            _ => panic!(
                "{}: {} {:?}: expected {:?}, got {got:?}",
                c.name, c.method, c.path, c.expected
            ),
        }
    }
}

#[test]
fn a_path_just_under_the_limit_still_matches() {
    let table = table();
    let id = "a".repeat(2000);
    let path = format!("/v1/submissions/{id}");
    match table.find(&Method::GET, &path) {
        RouteMatch::Found { path_params, .. } => assert_eq!(path_params[0].1, id),
        other => panic!("{other:?}"),
    }
}

#[test]
fn query_strings_parse_strictly() {
    assert_eq!(
        parse_query("a=1&b=x+y&c=%41%2B%26&d&&e=&a=2").unwrap(),
        params(&[
            ("a", "1"),
            ("b", "x y"),
            ("c", "A+&"),
            ("d", ""),
            ("e", ""),
            ("a", "2")
        ]),
    );
    assert_eq!(parse_query("").unwrap(), params(&[]));
    assert_eq!(parse_query("k%20ey=v%3Dw").unwrap(), params(&[("k ey", "v=w")]));
    assert_eq!(parse_query("x=caf%C3%A9").unwrap(), params(&[("x", "café")]));

    struct Bad {
        query: String,
        field: &'static str,
        reason: &'static str,
    }
    let bad = [
        Bad {
            query: "a=%zz".into(),
            field: "a",
            reason: "value is not valid percent-encoded UTF-8",
        },
        Bad {
            query: "a=%f".into(),
            field: "a",
            reason: "value is not valid percent-encoded UTF-8",
        },
        Bad {
            query: "a=%ff".into(),
            field: "a",
            reason: "value is not valid percent-encoded UTF-8",
        },
        Bad {
            query: "a=%C3".into(),
            field: "a",
            reason: "value is not valid percent-encoded UTF-8",
        },
        Bad {
            query: "a=%00".into(),
            field: "a",
            reason: "value is not valid percent-encoded UTF-8",
        },
        Bad {
            query: "%ff=1".into(),
            field: "%ff",
            reason: "key is not valid percent-encoded UTF-8",
        },
        Bad {
            query: "=1".into(),
            field: "",
            reason: "empty query key",
        },
        Bad {
            query: "%20=1&=2".into(),
            field: "",
            reason: "empty query key",
        },
        Bad {
            query: (0..129).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&"),
            field: "",
            reason: "more than 128 query parameters",
        },
    ];
    for b in bad {
        let err = parse_query(&b.query).expect_err(&b.query);
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            (b.field, b.reason),
            "{}: {err}",
            b.query
        );
    }
    let max = (0..128).map(|_| "ids=a").collect::<Vec<_>>().join("&");
    assert_eq!(parse_query(&max).unwrap().len(), 128);
}

#[test]
fn bound_parameters_produce_the_typed_message() {
    let mut msg = message("somastack.v1.ListSubmissionsRequest");
    bind_params(
        &mut msg,
        &params(&[
            ("state", "SUBMISSION_STATE_APPROVED"),
            ("page.page_size", "25"),
            ("page.pageToken", "tok"),
        ]),
    )
    .unwrap();
    let typed: soma_proto::v1::ListSubmissionsRequest = msg.transcode_to().unwrap();
    assert_eq!(
        typed,
        soma_proto::v1::ListSubmissionsRequest {
            state: soma_proto::v1::SubmissionState::Approved as i32,
            page: Some(soma_proto::v1::PageRequest {
                page_size: 25,
                page_token: "tok".into(),
            }),
            ..Default::default()
        }
    );

    let mut msg = message("somastack.v1.ListSubmissionsRequest");
    bind_params(&mut msg, &params(&[("state", "3")])).unwrap();
    let typed: soma_proto::v1::ListSubmissionsRequest = msg.transcode_to().unwrap();
    assert_eq!(typed.state, soma_proto::v1::SubmissionState::Rejected as i32);
}

#[test]
fn timestamps_and_durations_bind_from_their_json_strings() {
    let mut msg = message("somastack.v1.ExportRequest");
    bind_params(
        &mut msg,
        &params(&[
            ("tenant", "acme"),
            ("from", "2024-02-29T12:00:00Z"),
            ("to", "2024-03-01T00:00:00.5+01:00"),
        ]),
    )
    .unwrap();
    let typed: soma_proto::v1::ExportRequest = msg.transcode_to().unwrap();
    assert_eq!(typed.tenant, "acme");
    // 2024-02-29T12:00:00Z = 1709208000 (date -u -d ... +%s).
    assert_eq!(
        typed.from.unwrap(),
        prost_types::Timestamp {
            seconds: 1_709_208_000,
            nanos: 0
        }
    );
    // 2024-03-01T00:00:00.5+01:00 = 2024-02-29T23:00:00.5Z = 1709247600.5.
    assert_eq!(
        typed.to.unwrap(),
        prost_types::Timestamp {
            seconds: 1_709_247_600,
            nanos: 500_000_000
        }
    );

    let mut msg = message("somastack.v1.RecordCapsuleRunRequest");
    bind_params(&mut msg, &params(&[("duration", "-1.5s")])).unwrap();
    let typed: soma_proto::v1::RecordCapsuleRunRequest = msg.transcode_to().unwrap();
    assert_eq!(
        typed.duration.unwrap(),
        prost_types::Duration {
            seconds: -1,
            nanos: -500_000_000
        }
    );

    for (key, value) in [
        ("from", "yesterday"),
        ("from", "2024-02-30T00:00:00Z"),
        ("from", "1709208000"),
    ] {
        let mut msg = message("somastack.v1.ExportRequest");
        let err = bind_params(&mut msg, &params(&[(key, value)])).unwrap_err();
        assert_eq!(err.field, key, "{value}");
        assert!(
            err.reason.starts_with("not a valid google.protobuf.Timestamp: "),
            "{value}: {err}"
        );
    }
    let mut msg = message("somastack.v1.RecordCapsuleRunRequest");
    let err = bind_params(&mut msg, &params(&[("duration", "1.5")])).unwrap_err();
    assert_eq!(err.field, "duration");
    assert!(
        err.reason.starts_with("not a valid google.protobuf.Duration: "),
        "{err}"
    );
}

#[test]
fn scalars_follow_the_proto3_json_mapping() {
    // VerifiedClaims: repeated string, bool, int64.
    let mut msg = message("somastack.v1.VerifiedClaims");
    bind_params(
        &mut msg,
        &params(&[
            ("capabilities", "a:read"),
            ("capabilities", "b:write"),
            ("mfa", "true"),
            ("expires_at", "-9223372036854775808"),
            ("issuedAt", "9223372036854775807"),
        ]),
    )
    .unwrap();
    let typed: soma_proto::v1::VerifiedClaims = msg.transcode_to().unwrap();
    assert_eq!(typed.capabilities, vec!["a:read", "b:write"]);
    assert!(typed.mfa);
    assert_eq!(typed.expires_at, i64::MIN);
    assert_eq!(typed.issued_at, i64::MAX);

    // ExportChunk.data: bytes, standard or URL-safe base64, padded or not.
    for encoded in ["+/8=", "+/8", "-_8=", "-_8"] {
        let mut msg = message("somastack.v1.ExportChunk");
        bind_params(&mut msg, &params(&[("data", encoded)])).unwrap();
        let typed: soma_proto::v1::ExportChunk = msg.transcode_to().unwrap();
        assert_eq!(typed.data, vec![0xfb, 0xff], "{encoded}");
    }

    // AnomalyFinding: doubles.
    let mut msg = message("somastack.v1.AnomalyFinding");
    bind_params(
        &mut msg,
        &params(&[("value", "1.5e3"), ("baseline", "-0.25"), ("score", "Infinity")]),
    )
    .unwrap();
    let typed: soma_proto::v1::AnomalyFinding = msg.transcode_to().unwrap();
    assert_eq!(typed.value, 1500.0);
    assert_eq!(typed.baseline, -0.25);
    assert_eq!(typed.score, f64::INFINITY);

    // uint32 bounds.
    let mut msg = message("somastack.v1.PageRequest");
    bind_params(&mut msg, &params(&[("page_size", "4294967295")])).unwrap();
    let typed: soma_proto::v1::PageRequest = msg.transcode_to().unwrap();
    assert_eq!(typed.page_size, u32::MAX);
}

#[test]
fn bad_parameters_are_refused_with_the_field_named_and_the_reason() {
    struct Case {
        name: &'static str,
        message: &'static str,
        params: &'static [(&'static str, &'static str)],
        field: &'static str,
        reason: &'static str,
    }
    let cases = [
        Case {
            name: "unknown field",
            message: "somastack.v1.ExportRequest",
            params: &[("nope", "1")],
            field: "nope",
            reason: "unknown field",
        },
        Case {
            name: "unknown nested",
            message: "somastack.v1.ListSubmissionsRequest",
            params: &[("page.nope", "1")],
            field: "page.nope",
            reason: "unknown field",
        },
        Case {
            name: "message target",
            message: "somastack.v1.ListSubmissionsRequest",
            params: &[("page", "x")],
            field: "page",
            reason: "message-typed fields cannot be set from parameters",
        },
        Case {
            name: "struct target",
            message: "somastack.v1.RunCapsuleRequest",
            params: &[("input", "{}")],
            field: "input",
            reason: "message-typed fields cannot be set from parameters",
        },
        Case {
            name: "into a timestamp",
            message: "somastack.v1.ExportRequest",
            params: &[("from.seconds", "1")],
            field: "from.seconds",
            reason: "not a path through a message field",
        },
        Case {
            name: "into a repeated message",
            message: "somastack.v1.RecordDisasterDrillRequest",
            params: &[("steps.name", "x")],
            field: "steps.name",
            reason: "not a path through a message field",
        },
        Case {
            name: "repeated message target",
            message: "somastack.v1.RecordDisasterDrillRequest",
            params: &[("steps", "x")],
            field: "steps",
            reason: "message-typed fields cannot be set from parameters",
        },
        Case {
            name: "into a scalar",
            message: "somastack.v1.ExportRequest",
            params: &[("tenant.x", "1")],
            field: "tenant.x",
            reason: "not a path through a message field",
        },
        Case {
            name: "set twice",
            message: "somastack.v1.ExportRequest",
            params: &[("tenant", "a"), ("tenant", "b")],
            field: "tenant",
            reason: "set twice",
        },
        Case {
            name: "set twice by both names",
            message: "somastack.v1.ListSubmissionsRequest",
            params: &[("page.page_size", "1"), ("page.pageSize", "1")],
            field: "page.pageSize",
            reason: "set twice",
        },
        Case {
            name: "set twice same value",
            message: "somastack.v1.ExportRequest",
            params: &[("tenant", "a"), ("tenant", "a")],
            field: "tenant",
            reason: "set twice",
        },
        Case {
            name: "empty key",
            message: "somastack.v1.ExportRequest",
            params: &[("", "a")],
            field: "",
            reason: "empty field path",
        },
        Case {
            name: "trailing dot",
            message: "somastack.v1.ListSubmissionsRequest",
            params: &[("page.", "1")],
            field: "page.",
            reason: "unknown field",
        },
        Case {
            name: "enum unknown name",
            message: "somastack.v1.ListSubmissionsRequest",
            params: &[("state", "APPROVED")],
            field: "state",
            reason: "\"APPROVED\" is not a value of somastack.v1.SubmissionState",
        },
        Case {
            name: "enum unknown number",
            message: "somastack.v1.ListSubmissionsRequest",
            params: &[("state", "99")],
            field: "state",
            reason: "99 is not a value of somastack.v1.SubmissionState",
        },
        Case {
            name: "enum other enum's name",
            message: "somastack.v1.ListSubmissionsRequest",
            params: &[("state", "RELEASE_STATE_ACTIVE")],
            field: "state",
            reason: "\"RELEASE_STATE_ACTIVE\" is not a value of somastack.v1.SubmissionState",
        },
        Case {
            name: "bool as 1",
            message: "somastack.v1.VerifiedClaims",
            params: &[("mfa", "1")],
            field: "mfa",
            reason: "\"1\" is not true or false",
        },
        Case {
            name: "bool capitalised",
            message: "somastack.v1.VerifiedClaims",
            params: &[("mfa", "True")],
            field: "mfa",
            reason: "\"True\" is not true or false",
        },
        Case {
            name: "int64 overflow",
            message: "somastack.v1.VerifiedClaims",
            params: &[("expires_at", "9223372036854775808")],
            field: "expires_at",
            reason: "\"9223372036854775808\" is out of range",
        },
        Case {
            name: "int64 fraction",
            message: "somastack.v1.VerifiedClaims",
            params: &[("expires_at", "1.0")],
            field: "expires_at",
            reason: "\"1.0\" is not a decimal integer",
        },
        Case {
            name: "int64 plus sign",
            message: "somastack.v1.VerifiedClaims",
            params: &[("expires_at", "+1")],
            field: "expires_at",
            reason: "\"+1\" is not a decimal integer",
        },
        Case {
            name: "int64 empty",
            message: "somastack.v1.VerifiedClaims",
            params: &[("expires_at", "")],
            field: "expires_at",
            reason: "\"\" is not a decimal integer",
        },
        Case {
            name: "uint32 negative",
            message: "somastack.v1.PageRequest",
            params: &[("page_size", "-1")],
            field: "page_size",
            reason: "\"-1\" is not a decimal integer",
        },
        Case {
            name: "uint32 overflow",
            message: "somastack.v1.PageRequest",
            params: &[("page_size", "4294967296")],
            field: "page_size",
            reason: "\"4294967296\" is out of range",
        },
        Case {
            name: "uint64 hex",
            message: "somastack.v1.InclusionProofRequest",
            params: &[("tree_size", "0x10")],
            field: "tree_size",
            reason: "\"0x10\" is not a decimal integer",
        },
        Case {
            name: "double rust spelling",
            message: "somastack.v1.AnomalyFinding",
            params: &[("value", "inf")],
            field: "value",
            reason: "\"inf\" is not a number",
        },
        Case {
            name: "double nan lowercase",
            message: "somastack.v1.AnomalyFinding",
            params: &[("value", "nan")],
            field: "value",
            reason: "\"nan\" is not a number",
        },
        Case {
            name: "double overflow",
            message: "somastack.v1.AnomalyFinding",
            params: &[("value", "1e400")],
            field: "value",
            reason: "\"1e400\" is out of range",
        },
        Case {
            name: "bytes not base64",
            message: "somastack.v1.ExportChunk",
            params: &[("data", "!!!")],
            field: "data",
            reason: "\"!!!\" is not base64",
        },
        Case {
            name: "bytes mixed alphabets",
            message: "somastack.v1.ExportChunk",
            params: &[("data", "+_8=")],
            field: "data",
            reason: "\"+_8=\" is not base64",
        },
    ];
    for c in cases {
        let mut msg = message(c.message);
        let err = bind_params(&mut msg, &params(c.params)).expect_err(c.name);
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            (c.field, c.reason),
            "{}: {err}",
            c.name
        );
    }
}

#[test]
fn a_parameter_may_not_contradict_the_body() {
    let mut msg = message("somastack.v1.ReviewSubmissionRequest");
    let desc = msg.descriptor();
    let field = desc.get_field_by_name("submission_id").unwrap();
    msg.set_field(&field, prost_reflect::Value::String("s1".into()));

    let mut same = msg.clone();
    bind_params(&mut same, &params(&[("submission_id", "s1")])).unwrap();
    let typed: soma_proto::v1::ReviewSubmissionRequest = same.transcode_to().unwrap();
    assert_eq!(typed.submission_id, "s1");

    let mut other = msg.clone();
    let err = bind_params(&mut other, &params(&[("submission_id", "s2")])).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason.as_str()),
        ("submission_id", "conflicts with a value already in the request")
    );
    let typed: soma_proto::v1::ReviewSubmissionRequest = other.transcode_to().unwrap();
    assert_eq!(typed.submission_id, "s1", "the body value is left untouched");
}

#[test]
fn path_parameters_from_find_bind_onto_the_request() {
    let table = table();
    let RouteMatch::Found { route, path_params } =
        table.find(&Method::GET, "/v1/tools/pdf%20reader/releases/2.0.0-rc.1")
    else {
        panic!("no match");
    };
    let mut msg = DynamicMessage::new(route.method.input());
    let mut all = path_params.clone();
    all.extend(parse_query("").unwrap());
    bind_params(&mut msg, &all).unwrap();
    let typed: soma_proto::v1::GetReleaseRequest = msg.transcode_to().unwrap();
    assert_eq!(typed.tool, "pdf reader");
    assert_eq!(typed.version, "2.0.0-rc.1");

    // A query may not override a path variable.
    let mut msg = DynamicMessage::new(route.method.input());
    let mut all = path_params;
    all.extend(parse_query("tool=other").unwrap());
    let err = bind_params(&mut msg, &all).unwrap_err();
    assert_eq!((err.field.as_str(), err.reason.as_str()), ("tool", "set twice"));
}

/// The table's order is a function of the descriptors alone. Which of
/// several competing templates wins (the most literal, left to right) is
/// tested where a table of competing routes can be built:
/// `routes::tests::the_most_literal_of_competing_templates_wins_in_any_declaration_order`
/// (no two routes of the four services compete for one path: each path is
/// found as exactly its own route by
/// `every_rpc_of_the_four_services_has_exactly_its_declared_route`).
#[test]
fn routes_iterate_deterministically() {
    let a: Vec<String> = table()
        .iter()
        .map(|r| format!("{} {}", r.http_method, r.template))
        .collect();
    let b: Vec<String> = table()
        .iter()
        .map(|r| format!("{} {}", r.http_method, r.template))
        .collect();
    assert_eq!(a, b);
}

/// One table, shared by reference count with tasks running at once on a
/// multi-threaded runtime (as the edge shares it with its connection
/// tasks): each task resolves every route, refuses a hostile path, and
/// gets exactly the answers a table of its own would give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_can_be_shared_across_tasks() {
    const TASKS: usize = 8;
    let table = std::sync::Arc::new(table());
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let table = std::sync::Arc::clone(&table);
        tasks.spawn(async move {
            let mut resolved = 0;
            // Each task starts at another row, so lookups interleave.
            let rows = every_route();
            for r in rows.iter().cycle().skip(task).take(rows.len()) {
                match table.find(&r.http, r.path) {
                    RouteMatch::Found { route, path_params } => {
                        assert_eq!(route.grpc_path, r.grpc, "task {task}: {} {}", r.http, r.path);
                        assert_eq!(path_params, params(r.params), "task {task}: {}", r.path);
                    }
                    other => panic!("task {task}: {} {} did not match: {other:?}", r.http, r.path),
                }
                resolved += 1;
                tokio::task::yield_now().await;
            }
            assert!(matches!(
                table.find(&Method::GET, "/v1/submissions/.."),
                RouteMatch::NotFound
            ));
            resolved
        });
    }
    let mut finished = 0;
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.expect("a task panicked"), every_route().len());
        finished += 1;
    }
    assert_eq!(finished, TASKS);
    // Shared, not copied: every task's handle is gone, the table remains.
    assert_eq!(std::sync::Arc::strong_count(&table), 1);
}
