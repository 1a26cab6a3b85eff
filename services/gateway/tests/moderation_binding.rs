//! A moderation decision is trusted only for the message it was made on.
//!
//! The edge moderates the final message and binds its decision to the
//! digest of that message's canonical proto3 JSON. `RunCapsule` (the
//! gateway's own moderated method) recomputes the digest of the message it
//! received: a decision made for another message, or none at all, is not
//! trusted, and the message is moderated again. On SQLite and on
//! PostgreSQL: each refusal is written to the gateway's database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use soma_gateway::context::{Moderated, RequestContext, RequestId};
use soma_gateway::killswitch::KillSwitches;
use soma_gateway::moderation::{ModerationPolicy, Moderator, input_digest};
use soma_gateway::ratelimit::RateLimiter;
use soma_gateway::{Admission, GatewayConfig, GatewayService, Region};
use soma_proto::v1::RunCapsuleRequest;
use soma_proto::v1::gateway_server::Gateway as _;
use soma_store::Database;

fn run(capsule_id: &str, note: &str) -> RunCapsuleRequest {
    let mut input = prost_types::Struct::default();
    input.fields.insert(
        "note".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(note.to_owned())),
        },
    );
    RunCapsuleRequest {
        capsule_id: capsule_id.to_owned(),
        environment: "production".to_owned(),
        input: Some(input),
    }
}

/// The digest the edge binds for `message`: of its proto3 JSON form.
fn digest_of(message: &RunCapsuleRequest) -> [u8; 32] {
    let json = soma_gateway::transcode::message_to_json("somastack.v1.RunCapsuleRequest", message).unwrap();
    input_digest(&json).unwrap()
}

/// The refusals `RunCapsule` wrote to `moderation_rejections`, as
/// (method, tenant, subject) rows, on either engine.
async fn rejections(db: &Database) -> Vec<(String, String, String)> {
    const SQL: &str = "SELECT method, tenant, subject FROM moderation_rejections ORDER BY decided_at_ms";
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        (None, Some(pool)) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

#[tokio::test]
async fn run_capsule_trusts_a_decision_only_for_the_message_it_was_made_on() {
    for engine in soma_store::testing::engines("gateway").await {
        eprintln!("--- engine: {}", engine.label);
        run_capsule_binding_on(&engine.connect().await).await;
        engine.cleanup().await;
    }
}

/// The binding test on one engine's gateway database: each refusal is also
/// written there (the audit the edge shares), and only the refusals are.
async fn run_capsule_binding_on(db: &Database) {
    let dir = tempfile::tempdir().unwrap();
    let config = GatewayConfig::dev(dir.path(), &Region::parse("local").unwrap(), None).unwrap();
    db.migrate(&soma_gateway::MIGRATIONS).await.unwrap();
    let admission = Admission::new(
        soma_auth::JwtVerifier::new(config.jwt.clone()).await.unwrap(),
        config.residency.clone(),
        config.mfa_max_age,
        config.jwt.leeway,
        KillSwitches::load(db.clone()).await.unwrap(),
        Moderator::new(ModerationPolicy::default_policy()),
        RateLimiter::new(config.rate_limit),
        db.clone(),
    );
    // No backend peers: a run admitted by moderation goes on to the
    // orchestration, which answers that CapsuleRepo is not configured.
    let ca = soma_testing::Ca::new();
    let backends = soma_gateway::forward::Backends::new(
        &ca.store("/svc/gateway", std::time::Duration::from_secs(3600)),
        &soma_mesh::Peers::default(),
        soma_auth::ClaimsSigner::generate("gateway-1").unwrap().0,
        std::time::Duration::from_secs(30),
        4 * 1024 * 1024,
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    let service = GatewayService::new(
        admission,
        Vec::new(),
        soma_gateway::capsule_run::CapsuleRunner::new(backends).unwrap(),
    );

    let card = run("c1", "card 4111 1111 1111 1111");
    let clean = run("c1", "hello");
    let bound = |message: &RunCapsuleRequest| {
        Some(Moderated {
            decision_id: "mod_00000000000000000000000000".to_owned(),
            input_sha256: digest_of(message),
        })
    };
    struct Case {
        name: &'static str,
        message: RunCapsuleRequest,
        moderation: Option<Moderated>,
        code: tonic::Code,
        reason: &'static str,
    }
    let cases = [
        Case {
            name: "no decision: moderated here, refused",
            message: card.clone(),
            moderation: None,
            code: tonic::Code::InvalidArgument,
            reason: "moderation_rejected",
        },
        Case {
            name: "a decision made for another message: moderated here, refused",
            message: card.clone(),
            moderation: bound(&clean),
            code: tonic::Code::InvalidArgument,
            reason: "moderation_rejected",
        },
        Case {
            name: "a decision for a message differing in one field only",
            message: run("4111111111111111", "hello"),
            moderation: bound(&clean),
            code: tonic::Code::InvalidArgument,
            reason: "moderation_rejected",
        },
        Case {
            name: "a decision made for this exact message is trusted",
            message: card.clone(),
            moderation: bound(&card),
            code: tonic::Code::Unavailable,
            reason: "backend_not_configured",
        },
        Case {
            name: "a clean message without a decision passes moderation here",
            message: clean.clone(),
            moderation: None,
            code: tonic::Code::Unavailable,
            reason: "backend_not_configured",
        },
    ];
    for case in cases {
        let context = RequestContext {
            request_id: RequestId::mint(),
            tenant: "acme".to_owned(),
            subject: "user@acme".to_owned(),
            region: "local".to_owned(),
            capabilities: vec!["capsules:run".to_owned(), "tools:execute".to_owned()],
            mfa: false,
            operator: false,
            moderation: case.moderation,
        };
        let mut request = tonic::Request::new(case.message);
        request.extensions_mut().insert(Arc::new(context));
        let status = service.run_capsule(request).await.unwrap_err();
        let reason = status
            .metadata()
            .get(soma_mesh::REASON_METADATA)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(
            (status.code(), reason.as_str()),
            (case.code, case.reason),
            "{}",
            case.name
        );
    }
    // The three refusals, and nothing for the two messages let through.
    let refused = (
        "/somastack.v1.Gateway/RunCapsule".to_owned(),
        "acme".to_owned(),
        "user@acme".to_owned(),
    );
    assert_eq!(
        rejections(db).await,
        vec![refused.clone(), refused.clone(), refused]
    );
}

#[test]
fn the_digest_is_of_the_canonical_json_so_encodings_of_one_message_agree() {
    // The same message, its fields in another order on the wire and with an
    // unknown field, has the digest of its one proto3 JSON form.
    let message = run("c1", "hello");
    let encoded = prost::Message::encode_to_vec(&message);
    let mut reordered = Vec::new();
    // environment (field 2) first, then capsule_id (1), then input (3),
    // then an unknown field 99 (varint 7).
    let fields = RunCapsuleRequest {
        capsule_id: String::new(),
        environment: "production".to_owned(),
        input: None,
    };
    reordered.extend(prost::Message::encode_to_vec(&fields));
    reordered.extend(prost::Message::encode_to_vec(&RunCapsuleRequest {
        capsule_id: "c1".to_owned(),
        environment: String::new(),
        input: message.input.clone(),
    }));
    reordered.extend([0x98, 0x06, 0x07]);
    assert_ne!(encoded, reordered);
    let decoded: RunCapsuleRequest = prost::Message::decode(reordered.as_slice()).unwrap();
    assert_eq!(digest_of(&decoded), digest_of(&message));
    // Any change to any field changes it.
    assert_ne!(digest_of(&run("c2", "hello")), digest_of(&message));
    assert_ne!(digest_of(&run("c1", "hello!")), digest_of(&message));
    // The canonical bytes are RFC 8785's: sorted members, no whitespace.
    let json = soma_gateway::transcode::message_to_json("somastack.v1.RunCapsuleRequest", &message).unwrap();
    let canonical = soma_sign::jcs::canonicalize(&json).unwrap();
    assert_eq!(
        String::from_utf8(canonical.clone()).unwrap(),
        r#"{"capsuleId":"c1","environment":"production","input":{"note":"hello"}}"#
    );
    assert_eq!(input_digest(&json).unwrap(), soma_sign::sha256(&canonical));
}
