//! grpcurl (Go gRPC and Go TLS, v1alpha reflection), an independent client,
//! lists and health-checks a service the runtime serves (CapsuleRepo, see
//! `common`) through mTLS with an operator SVID issued by the development
//! authority, and is refused a write RPC by the runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use soma_mesh::ServiceKind;
use soma_testing::{Ca, engine_stores, python};

#[tokio::test]
async fn grpcurl_lists_and_health_checks_a_service_with_an_operator_svid() {
    for stores in engine_stores(&[ServiceKind::CapsuleRepo]).await {
        let ca = Ca::new();
        let svc = common::start(
            &ca,
            ServiceKind::CapsuleRepo,
            None,
            &[],
            stores.of(ServiceKind::CapsuleRepo),
        )
        .await;
        let out_dir = ca.dir.path().join("operator");
        ca.authority
            .issue_to_dir(&ca.id("/operator/alice"), Duration::from_secs(600), &out_dir)
            .unwrap();
        let grpcurl = python().parent().unwrap().join("grpcurl");
        let tls_args = |cmd: &mut tokio::process::Command| {
            cmd.arg("-cacert")
                .arg(out_dir.join("bundle.pem"))
                .arg("-cert")
                .arg(out_dir.join("svid.pem"))
                .arg("-key")
                .arg(out_dir.join("key.pem"))
                .args(["-authority", "localhost"]);
        };

        let mut list = tokio::process::Command::new(&grpcurl);
        tls_args(&mut list);
        let out = list.arg(svc.addr.to_string()).arg("list").output().await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed = String::from_utf8(out.stdout).unwrap();
        assert!(
            listed.lines().any(|l| l == "somastack.v1.CapsuleRepo"),
            "{listed}"
        );

        let mut check = tokio::process::Command::new(&grpcurl);
        tls_args(&mut check);
        let out = check
            .arg(svc.addr.to_string())
            .arg("grpc.health.v1.Health/Check")
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));

        // A write RPC is refused to an operator: PERMISSION_DENIED from the
        // runtime, before the handler.
        let mut write = tokio::process::Command::new(&grpcurl);
        tls_args(&mut write);
        let out = write
            .args(["-d", "{}"])
            .arg(svc.addr.to_string())
            .arg("somastack.v1.CapsuleRepo/SubmitCapsule")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("PermissionDenied"), "{stderr}");
        svc.stop().await;
        stores.cleanup().await;
    }
}
