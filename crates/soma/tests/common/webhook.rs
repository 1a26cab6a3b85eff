//! A real HTTP receiver of Analytics' signed webhook notifications.

use std::sync::{Arc, Mutex};

/// What the test's webhook receiver got: each request's headers and body.
pub type Hooks = Arc<Mutex<Vec<(http::HeaderMap, axum::body::Bytes)>>>;

/// A real HTTP receiver of Analytics' drill notifications on `127.0.0.1:0`:
/// its URL and what it got.
pub async fn receiver() -> (String, Hooks) {
    let hooks: Hooks = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(hooks): axum::extract::State<Hooks>,
                 headers: http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    hooks.lock().unwrap().push((headers, body));
                    http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(Arc::clone(&hooks));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hooks)
}
