//! An instance that stands by, and clients of a service with several
//! instances, over real mTLS on 127.0.0.1:0 (Analytics' routes and
//! policies, handlers answering `UNIMPLEMENTED`: see `common`).
//!
//! - While its `Serving` state says it stands by, an instance reports
//!   NOT_SERVING (to `Check` and on an open `Watch`), refuses every method
//!   not declared `read_only` with UNAVAILABLE `standby` before the handler
//!   (counted and logged as a refusal), and lets read-only methods, health
//!   and reflection through; once it serves, all of it flips.
//! - A `MeshChannel` over several addresses sends each call to the instance
//!   that serves, and follows a switch; an address whose server presents
//!   another SPIFFE ID is never called, however it reports its health.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use soma_mesh::{MeshChannel, PeerAddrs, ServiceKind, Serving};
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_proto::v1::{LedgerCheckpointRequest, RecordBillingEventRequest};
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, Running, channel, engine_stores, grpc_reason, health, http_get};
use tokio::sync::watch;
use tonic::Code;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// A liveness bound on a health change reaching a client, not a target.
const BOUND: Duration = Duration::from_secs(20);

/// Analytics served under identity `path` from `ca`, standing as `serving`
/// says.
async fn start_standing(
    ca: &Ca,
    path: &str,
    db: &StoreSettings,
    serving: watch::Receiver<Serving>,
) -> Running {
    let identity = ca.store(path, Duration::from_secs(3600));
    let settings = soma_testing::settings(ServiceKind::Analytics, &[]);
    let db = Database::connect(db, "analytics").await.unwrap();
    let mut spec = common::spec(ServiceKind::Analytics, db, &settings.limits);
    spec.serving = Some(serving);
    soma_testing::serve(settings, identity, None, spec).await
}

/// `name`'s value on `svc`'s `/metrics`.
async fn metric(svc: &Running, name: &str) -> Option<u64> {
    http_get(svc.admin, "/metrics")
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

const DENIED_STANDBY: &str =
    "soma_rpc_denied_total{method=\"/somastack.v1.Analytics/RecordBillingEvent\",reason=\"standby\"}";
const DISPATCHED_BILLING: &str =
    "soma_rpc_dispatched_total{method=\"/somastack.v1.Analytics/RecordBillingEvent\"}";

#[tokio::test]
async fn an_instance_standing_by_is_not_serving_and_refuses_all_but_reads() {
    for stores in engine_stores(&[ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let (stand, standing) = watch::channel(Serving::No("standby"));
        let svc = start_standing(&ca, "/svc/analytics", stores.of(ServiceKind::Analytics), standing).await;
        let registry = ca.store("/svc/tool-registry", Duration::from_secs(600));
        let gateway = ca.store("/svc/gateway", Duration::from_secs(600));
        let to_svc = |store| channel(std::sync::Arc::clone(store), svc.addr, &svc.id);

        // Standing by: health says so, to a Check and on a Watch.
        assert_eq!(health(to_svc(&gateway), "").await.unwrap(), NOT_SERVING);
        assert_eq!(
            health(to_svc(&gateway), "somastack.v1.Analytics").await.unwrap(),
            NOT_SERVING
        );
        let mut watch_client = tonic_health::pb::health_client::HealthClient::new(to_svc(&gateway));
        let mut updates = watch_client
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updates.message().await.unwrap().unwrap().status, NOT_SERVING);
        // A write is refused before its handler, with the reason; a read
        // reaches its handler.
        let refused = AnalyticsClient::new(to_svc(&registry))
            .record_billing_event(RecordBillingEventRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(grpc_reason(&refused), "standby");
        assert!(
            refused.message().contains("does not serve"),
            "{}",
            refused.message()
        );
        let read = AnalyticsClient::new(to_svc(&gateway))
            .ledger_checkpoint(LedgerCheckpointRequest {})
            .await
            .unwrap_err();
        assert_eq!(read.code(), Code::Unimplemented, "{read:?}");
        assert_eq!(metric(&svc, DENIED_STANDBY).await, Some(1));
        assert_eq!(metric(&svc, DISPATCHED_BILLING).await, Some(0));
        // Who may call still comes first: a caller not listed is refused as
        // ever, standby or not.
        let not_listed = AnalyticsClient::new(to_svc(&gateway))
            .record_billing_event(RecordBillingEventRequest::default())
            .await
            .unwrap_err();
        assert_eq!(not_listed.code(), Code::PermissionDenied);
        assert_eq!(grpc_reason(&not_listed), "caller_not_allowed");

        // Serving: the Watch sees it, and the write reaches its handler.
        stand.send_replace(Serving::Yes);
        let update = tokio::time::timeout(BOUND, updates.message()).await.unwrap();
        assert_eq!(update.unwrap().unwrap().status, SERVING);
        assert_eq!(
            health(to_svc(&gateway), "somastack.v1.Analytics").await.unwrap(),
            SERVING
        );
        let reached = AnalyticsClient::new(to_svc(&registry))
            .record_billing_event(RecordBillingEventRequest::default())
            .await
            .unwrap_err();
        assert_eq!(reached.code(), Code::Unimplemented, "{reached:?}");
        assert_eq!(metric(&svc, DISPATCHED_BILLING).await, Some(1));

        // And back.
        stand.send_replace(Serving::No("standby"));
        let update = tokio::time::timeout(BOUND, updates.message()).await.unwrap();
        assert_eq!(update.unwrap().unwrap().status, NOT_SERVING);
        let refused = AnalyticsClient::new(to_svc(&registry))
            .record_billing_event(RecordBillingEventRequest::default())
            .await
            .unwrap_err();
        assert_eq!(grpc_reason(&refused), "standby");
        svc.stop().await;
        stores.cleanup().await;
    }
}

/// Waits until the client's set believes exactly instance `index` serves.
async fn wait_for_choice(client: &MeshChannel, index: usize) {
    let set = client.peer_set().unwrap();
    let deadline = Instant::now() + BOUND;
    while !(0..set.len()).all(|i| set.believed_serving(i) == (i == index)) {
        assert!(
            Instant::now() < deadline,
            "the client never saw instance {index} alone serving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(set.pick(), index);
}

/// Calls `RecordBillingEvent` through `client`: the instance that serves
/// lets it reach its handler (`UNIMPLEMENTED`); a standby would refuse it.
async fn call(client: &MeshChannel) -> tonic::Status {
    AnalyticsClient::new(client.clone())
        .record_billing_event(RecordBillingEventRequest::default())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_client_of_several_instances_calls_the_one_that_serves_and_follows_a_switch() {
    for stores in engine_stores(&[ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let db = stores.of(ServiceKind::Analytics);
        let (stand_a, standing_a) = watch::channel(Serving::No("standby"));
        let (stand_b, standing_b) = watch::channel(Serving::Yes);
        let a = start_standing(&ca, "/svc/analytics", db, standing_a).await;
        let b = start_standing(&ca, "/svc/analytics", db, standing_b).await;
        let addrs = PeerAddrs::from_list([a.addr.to_string().as_str(), b.addr.to_string().as_str()]).unwrap();
        let registry = ca.store("/svc/tool-registry", Duration::from_secs(600));
        let client = MeshChannel::new(registry.clone(), &addrs, a.id.clone()).unwrap();

        // B serves: every call reaches B's handler, none A's.
        wait_for_choice(&client, 1).await;
        for _ in 0..5 {
            assert_eq!(call(&client).await.code(), Code::Unimplemented);
        }
        assert_eq!(metric(&b, DISPATCHED_BILLING).await, Some(5));
        assert_eq!(metric(&a, DISPATCHED_BILLING).await, Some(0));

        // A takes over, B stands by: the client follows.
        stand_a.send_replace(Serving::Yes);
        stand_b.send_replace(Serving::No("standby"));
        wait_for_choice(&client, 0).await;
        for _ in 0..5 {
            assert_eq!(call(&client).await.code(), Code::Unimplemented);
        }
        assert_eq!(metric(&a, DISPATCHED_BILLING).await, Some(5));
        assert_eq!(metric(&b, DISPATCHED_BILLING).await, Some(5));

        // A goes away and B serves again: its health stream breaks, the
        // client turns to B.
        a.stop().await;
        stand_b.send_replace(Serving::Yes);
        wait_for_choice(&client, 1).await;
        assert_eq!(call(&client).await.code(), Code::Unimplemented);
        assert_eq!(metric(&b, DISPATCHED_BILLING).await, Some(6));
        drop(stand_a);

        // An address whose server is another service (its SVID another
        // SPIFFE ID) is never called, though it says it serves: its
        // handshake fails, calls go to the standby and are refused there.
        let (_stand_c, standing_c) = watch::channel(Serving::Yes);
        let imposter = start_standing(&ca, "/svc/capsule-repo", db, standing_c).await;
        let (_stand_d, standing_d) = watch::channel(Serving::No("standby"));
        let standby = start_standing(&ca, "/svc/analytics", db, standing_d).await;
        let addrs = PeerAddrs::from_list([
            imposter.addr.to_string().as_str(),
            standby.addr.to_string().as_str(),
        ])
        .unwrap();
        let strict = MeshChannel::new(registry, &addrs, b.id.clone()).unwrap();
        let deadline = Instant::now() + BOUND;
        let set = strict.peer_set().unwrap();
        while set.believed_serving(0) || set.believed_serving(1) {
            assert!(Instant::now() < deadline, "the imposter was believed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..3 {
            let status = call(&strict).await;
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        assert_eq!(metric(&imposter, DISPATCHED_BILLING).await, Some(0));
        imposter.stop().await;
        standby.stop().await;
        b.stop().await;
        stores.cleanup().await;
    }
}
