//! Billing exactly once, across two real services: the tool registry bills
//! every execution through its outbox to Analytics over mTLS. With
//! Analytics stopped for part of the run and started again on the same
//! address, 200 executions become exactly 200 billing events in Analytics'
//! ledger, none twice, each the registry's own id — on every engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::analytics::AnalyticsKeys;
use common::registry::{Harness, Publisher, adapter};
use serde_json::json;
use soma_auth::ClaimsSigner;
use soma_mesh::ServiceKind;
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, Running};

const EXECUTIONS: usize = 200;

async fn start_analytics(ca: &Ca, store: &StoreSettings, keys: &AnalyticsKeys, addr: &str) -> Running {
    let identity = ca.store("/svc/analytics", Duration::from_secs(3600));
    let settings = soma_testing::settings(ServiceKind::Analytics, &[("SOMA_SERVICE_ADDR", addr)]);
    let db = Database::connect(store, "analytics").await.unwrap();
    db.migrate(&soma_analytics::MIGRATIONS).await.unwrap();
    let spec = soma_analytics::spec(db, &settings.limits, keys.config())
        .await
        .unwrap();
    soma_testing::serve(settings, identity, None, spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_are_billed_exactly_once_across_an_analytics_restart() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::Analytics]).await {
        let label = stores.label;
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let analytics_store = stores.of(ServiceKind::Analytics);
        // Restarted on this address later: a port no outgoing connection takes.
        let analytics = start_analytics(
            &ca,
            analytics_store,
            &keys,
            &soma_testing::restartable_addr().to_string(),
        )
        .await;
        let addr = analytics.addr;
        let h = registry_delivering_to(ca, &stores, addr, analytics.id.clone()).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        h.publish(publisher.release("text-stats", "1.0.0", &adapter("text_stats")))
            .await
            .unwrap();

        let mut ids = Vec::with_capacity(EXECUTIONS);
        let mut analytics = Some(analytics);
        for i in 0..EXECUTIONS {
            if i == 50 {
                // Analytics goes away with events in flight.
                analytics.take().unwrap().stop().await;
            }
            if i == 150 {
                analytics = Some(start_analytics(&h.ca, analytics_store, &keys, &addr.to_string()).await);
            }
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            let run = h
                .execute(tenant, "text-stats", "", json!({"text": format!("run {i}")}))
                .await
                .unwrap();
            ids.push(run.billing_event_id);
        }

        // The outbox drains once Analytics is back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (backlog, _) = h.registry.outbox_backlog().await.unwrap();
            if backlog == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{label}: {backlog} events still waiting after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let db = common::analytics::database(analytics_store).await;
        let total = soma_testing::scalar(&db, "SELECT COUNT(*) FROM billing_events").await;
        let distinct = soma_testing::scalar(&db, "SELECT COUNT(DISTINCT event_id) FROM billing_events").await;
        assert_eq!(
            (total, distinct),
            (EXECUTIONS as i64, EXECUTIONS as i64),
            "{label}"
        );
        let mut stored: Vec<String> = soma_store::on_pool!(db, pool => {
            use sqlx::Row as _;
            sqlx::query("SELECT event_id FROM billing_events")
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String, _>(0).unwrap())
                .collect()
        });
        stored.sort();
        ids.sort();
        assert_eq!(
            stored, ids,
            "{label}: the ledger holds exactly the registry's events"
        );
        let acme =
            soma_testing::scalar(&db, "SELECT COUNT(*) FROM billing_events WHERE tenant = 'acme'").await;
        assert_eq!(
            acme,
            (EXECUTIONS / 2) as i64,
            "{label}: tenants from the verified claims"
        );
        // A version with build metadata is billed like any other (Analytics
        // used to refuse the `+`, and the event waited in the outbox forever).
        h.publish(publisher.release("build-meta", "1.0.0+build.7", &adapter("echo")))
            .await
            .unwrap();
        let run = h
            .execute("acme", "build-meta", "", json!({"a": 1}))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while h.registry.outbox_backlog().await.unwrap().0 > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{label}: the event was not delivered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let version = soma_testing::scalar_text(
            &db,
            &format!(
                "SELECT tool_version FROM billing_events WHERE event_id = '{}'",
                run.billing_event_id
            ),
        )
        .await;
        assert_eq!(version, "1.0.0+build.7", "{label}");

        // Each is a ledger leaf.
        let leaves = soma_testing::scalar(&db, "SELECT COUNT(*) FROM ledger_leaves").await;
        assert!(leaves >= EXECUTIONS as i64, "{label}: {leaves} leaves");
        db.close().await;

        h.stop().await;
        analytics.unwrap().stop().await;
        stores.cleanup().await;
    }
}

/// The registry on `stores`' database, its outbox delivering to an
/// Analytics that was started and stopped again: every event waits until
/// Analytics is started again on the returned address (a port no outgoing
/// connection takes) with the returned keys.
async fn registry_with_analytics_stopped(
    stores: &soma_testing::Stores,
) -> (Harness, AnalyticsKeys, std::net::SocketAddr) {
    let ca = Ca::new();
    let keys = AnalyticsKeys::generate();
    let analytics = start_analytics(
        &ca,
        stores.of(ServiceKind::Analytics),
        &keys,
        &soma_testing::restartable_addr().to_string(),
    )
    .await;
    let (addr, analytics_id) = (analytics.addr, analytics.id.clone());
    analytics.stop().await;
    let h = registry_delivering_to(ca, stores, addr, analytics_id).await;
    (h, keys, addr)
}

/// The registry under `ca` on `stores`' database, with a fresh gateway key
/// and keyring, its outbox delivering to the Analytics `analytics_id` at
/// `addr`.
async fn registry_delivering_to(
    ca: Ca,
    stores: &soma_testing::Stores,
    addr: std::net::SocketAddr,
    analytics_id: soma_identity::SpiffeId,
) -> Harness {
    let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
    let (_, registry_keys) = soma_sign::HmacKeyring::generate("registry-1").unwrap();
    Harness::start_on(
        ca,
        claims,
        stores.of(ServiceKind::ToolRegistry),
        registry_keys,
        soma_sandbox::SandboxConfig::default(),
        Some((addr, analytics_id)),
    )
    .await
}

/// An outbox row edited in the database (here, its billing event's time)
/// fails its MAC and is never sent: it stays parked with the reason, while
/// an intact event beside it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_row_edited_in_the_database_is_never_sent() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::Analytics]).await {
        let label = stores.label;
        let analytics_store = stores.of(ServiceKind::Analytics);
        let (h, keys, addr) = registry_with_analytics_stopped(&stores).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        h.publish(publisher.release("echo", "1.0.0", &adapter("echo")))
            .await
            .unwrap();
        let tampered = h.execute("acme", "echo", "", json!({"a": 1})).await.unwrap();
        let intact = h.execute("acme", "echo", "", json!({"a": 2})).await.unwrap();
        let edited = soma_testing::exec(
            &h.db,
            &format!(
                "UPDATE outbox SET created_at = created_at - 1 WHERE event_id = '{}'",
                tampered.billing_event_id
            ),
        )
        .await;
        assert_eq!(edited, 1, "{label}");

        let analytics = start_analytics(&h.ca, analytics_store, &keys, &addr.to_string()).await;
        let db = common::analytics::database(analytics_store).await;
        let count = |id: String| {
            let db = &db;
            async move {
                soma_testing::scalar(
                    db,
                    &format!("SELECT COUNT(*) FROM billing_events WHERE event_id = '{id}'"),
                )
                .await
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while count(intact.billing_event_id.clone()).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{label}: the intact event was not delivered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            count(tampered.billing_event_id.clone()).await,
            0,
            "{label}: the edited event was sent"
        );
        let error = soma_testing::scalar_text(
            &h.db,
            &format!(
                "SELECT last_error FROM outbox WHERE event_id = '{}'",
                tampered.billing_event_id
            ),
        )
        .await;
        assert!(error.contains("integrity"), "{label}: {error}");
        db.close().await;
        h.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

/// The value of `series` (name and labels) in a `/metrics` response, as
/// written.
fn sample<'a>(exposition: &'a str, series: &str) -> Option<&'a str> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
}

/// Decimal seconds as written on `/metrics`, in nanoseconds, exactly.
fn nanos_of(seconds: &str) -> i64 {
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    assert!(fraction.len() <= 9, "{seconds}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + format!("{fraction:0<9}").parse::<i64>().unwrap()
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// The registry's outbox figures on its `/metrics`: (pending, oldest
/// pending age as written, delivered, failures).
async fn outbox_figures(h: &Harness) -> (Option<i64>, Option<String>, i64, i64) {
    let text = soma_testing::http_get(h.running.admin, "/metrics").await;
    let of = |name: &str| sample(&text, &format!("{name}{{outbox=\"tool_registry\"}}")).map(str::to_owned);
    (
        of("soma_outbox_pending_events").map(|v| v.parse().unwrap()),
        of("soma_outbox_oldest_pending_age_seconds"),
        of("soma_outbox_delivered_total").unwrap().parse().unwrap(),
        of("soma_outbox_delivery_failures_total")
            .unwrap()
            .parse()
            .unwrap(),
    )
}

/// The outbox's figures on the registry's `/metrics` are exact. With
/// Analytics stopped, every event waits and is counted, each attempt fails
/// and is counted, and the oldest event's age is that of the stored row at
/// the moment of the scrape; with Analytics back, the backlog drains to 0
/// and exactly the events written are counted delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_backlog_on_metrics_is_exact_and_drains_once_analytics_is_back() {
    const RUNS: i64 = 12;
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::Analytics]).await {
        let label = stores.label;
        let analytics_store = stores.of(ServiceKind::Analytics);
        let (h, keys, addr) = registry_with_analytics_stopped(&stores).await;
        let (_, _, delivered, _) = outbox_figures(&h).await;
        assert_eq!(delivered, 0, "{label}");

        // Audit events (the publisher key, the release), then RUNS billing
        // events.
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        h.publish(publisher.release("echo", "1.0.0", &adapter("echo")))
            .await
            .unwrap();
        for i in 0..RUNS {
            h.execute("acme", "echo", "", json!({"run": i})).await.unwrap();
        }
        let rows = soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM outbox").await;
        let billing = soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM outbox WHERE kind = 'billing'").await;
        assert_eq!(billing, RUNS, "{label}");
        assert!(rows > RUNS, "{label}: {rows} rows");

        // Every event waits and was tried at least once (the deliverer is
        // woken by each write).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (pending, _, delivered, failures) = outbox_figures(&h).await;
            assert_eq!(delivered, 0, "{label}: delivered with Analytics down");
            if pending == Some(rows) && failures >= rows {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{label}: pending {pending:?}, failures {failures}, {rows} rows"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The oldest event's age is the stored row's, between the clock
        // before and after the scrape.
        let oldest = soma_testing::scalar(&h.db, "SELECT MIN(created_at) FROM outbox").await;
        let before = now_nanos();
        let (pending, age, _, _) = outbox_figures(&h).await;
        let after = now_nanos();
        assert_eq!(pending, Some(rows), "{label}");
        let age = nanos_of(&age.unwrap());
        assert!(
            before - oldest <= age && age <= after - oldest,
            "{label}: age {age} ns outside [{}, {}]",
            before - oldest,
            after - oldest
        );

        // Analytics back on its address: the backlog drains to 0, and
        // exactly the events written were delivered.
        let analytics = start_analytics(&h.ca, analytics_store, &keys, &addr.to_string()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (age, delivered) = loop {
            let (pending, age, delivered, _) = outbox_figures(&h).await;
            if pending == Some(0) {
                break (age, delivered);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{label}: {pending:?} events still waiting after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(age.as_deref(), Some("0"), "{label}");
        assert_eq!(delivered, rows, "{label}");
        assert_eq!(
            soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM outbox").await,
            0,
            "{label}"
        );
        let db = common::analytics::database(analytics_store).await;
        assert_eq!(
            soma_testing::scalar(&db, "SELECT COUNT(*) FROM billing_events").await,
            RUNS,
            "{label}"
        );
        db.close().await;
        h.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}
