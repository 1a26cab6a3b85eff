//! A backend with several instances (Analytics' active one and its
//! standby), as the edge reaches it (`soma_gateway::forward::Backend`):
//! each relayed call goes to the instance that serves, and a call the
//! other instance refused as a standby — which wrote nothing — is sent on
//! to the one that serves instead of failing, even when the edge had not
//! yet heard of the switch. The instances are real mTLS servers of the
//! mesh runtime with Analytics' routes and policies, whose handlers answer
//! `UNIMPLEMENTED`: a call that reaches a handler is told so, a call a
//! standby refuses is told `UNAVAILABLE` `standby`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use soma_gateway::forward::Backend;
use soma_mesh::{PeerAddrs, Readiness, ServiceKind, ServiceSpec, Serving};
use soma_proto::v1::RecordCapsuleRunRequest;
use soma_proto::v1::analytics_server::{Analytics, AnalyticsServer};
use soma_testing::{Ca, Running};
use tokio::sync::watch;
use tonic::Code;

/// Every Analytics RPC answering `UNIMPLEMENTED`.
struct Unimplemented;

#[tonic::async_trait]
impl Analytics for Unimplemented {}

const RECORD: &str = "/somastack.v1.Analytics/RecordCapsuleRun";

/// An Analytics instance standing as `serving` says.
async fn instance(ca: &Ca, serving: watch::Receiver<Serving>) -> Running {
    let settings = soma_testing::settings(ServiceKind::Analytics, &[]);
    let spec = ServiceSpec {
        name: ServiceKind::Analytics.grpc_name(),
        routes: tonic::service::Routes::new(AnalyticsServer::new(Unimplemented)),
        readiness: Readiness::always(),
        metrics: Vec::new(),
        serving: Some(serving),
    };
    soma_testing::serve(
        settings,
        ca.store("/svc/analytics", Duration::from_secs(600)),
        None,
        spec,
    )
    .await
}

async fn record(backend: &Backend) -> tonic::Status {
    let message = Bytes::from(RecordCapsuleRunRequest::default().encode_to_vec());
    backend
        .call(
            http::uri::PathAndQuery::from_static(RECORD),
            http::HeaderMap::new(),
            message,
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_a_standby_refused_goes_on_to_the_instance_that_serves() {
    let ca = Ca::new();
    let (stand_a, serving_a) = watch::channel(Serving::Yes);
    let (stand_b, serving_b) = watch::channel(Serving::No("standby"));
    let a = instance(&ca, serving_a).await;
    let b = instance(&ca, serving_b).await;
    let addrs = PeerAddrs::from_list([a.addr.to_string().as_str(), b.addr.to_string().as_str()]).unwrap();
    let gateway = ca.store("/svc/gateway", Duration::from_secs(600));
    let backend = Backend::new(&gateway, &addrs, a.id.clone(), 1 << 20, Duration::from_secs(10)).unwrap();
    let set = backend.channel.peer_set().unwrap().clone();
    let wait_for = |index: usize| {
        let set = set.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !set.believed_serving(index) || set.believed_serving(1 - index) {
                assert!(
                    Instant::now() < deadline,
                    "instance {index} never seen serving alone"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // Switches back and forth, each call sent the moment the instances
    // have switched, before the edge hears of it: the call goes to the
    // instance that stands by now, which refuses it, and on to the other.
    // Whether or not the edge had heard already, every call reaches the
    // serving instance's handler; none is answered `standby`.
    let mut serving = 0;
    for round in 0..20 {
        wait_for(serving).await;
        let (stand_now, stand_other) = if serving == 0 {
            (&stand_a, &stand_b)
        } else {
            (&stand_b, &stand_a)
        };
        stand_other.send_replace(Serving::Yes);
        stand_now.send_replace(Serving::No("standby"));
        serving = 1 - serving;
        let status = record(&backend).await;
        assert_eq!(status.code(), Code::Unimplemented, "round {round}: {status:?}");
    }
    let refused = a.metrics.denied_count(RECORD, "standby") + b.metrics.denied_count(RECORD, "standby");
    println!("20 switches: {refused} calls refused by a standby and sent on");
    assert!(
        refused > 0,
        "no call ever met a standby: the sending on was not exercised"
    );
    a.stop().await;
    b.stop().await;
}
