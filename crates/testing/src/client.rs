//! Clients of a running service: mTLS channels, the runtime's health and
//! reflection services, the reason of a refusal, and the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;

use soma_identity::{SpiffeId, SvidStore};
use tonic::transport::Channel;

/// An mTLS channel from `client` to the service `server` at `addr`.
pub fn channel(client: Arc<SvidStore>, addr: SocketAddr, server: &SpiffeId) -> Channel {
    soma_mesh::channel(client, addr, server.clone()).unwrap()
}

/// Health status of `service` (the empty string: the whole server).
pub async fn health(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status)
}

/// Defines `$name`, listing the services of a server through the server
/// reflection protocol of `tonic_reflection::pb::$version` (v1 and v1alpha
/// are the same protocol under two package names, with distinct types).
macro_rules! reflection_list {
    ($(#[$doc:meta])* $name:ident, $version:ident) => {
        $(#[$doc])*
        pub async fn $name(channel: Channel) -> Vec<String> {
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            let mut client = ServerReflectionClient::new(channel);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut stream = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner();
            let message = stream.message().await.unwrap().unwrap();
            match message.message_response.unwrap() {
                MessageResponse::ListServicesResponse(list) => {
                    list.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected reflection response {other:?}"),
            }
        }
    };
}

reflection_list!(
    /// Service names listed by server reflection v1.
    reflection_list,
    v1
);
reflection_list!(
    /// Service names listed by server reflection v1alpha.
    reflection_list_v1alpha,
    v1alpha
);

/// The `soma-reason` of a gRPC refusal (empty when it carries none).
pub fn grpc_reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(soma_mesh::REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Asserts that `status` answers a write that SQLite's writer lock, held by
/// another connection past the busy timeout, refused: `UNAVAILABLE`
/// `database_busy`, telling the caller that the request may be sent again.
#[track_caller]
pub fn assert_database_busy(status: &tonic::Status) {
    assert_eq!(
        (status.code(), grpc_reason(status)),
        (tonic::Code::Unavailable, "database_busy"),
        "{status:?}"
    );
    assert!(status.message().contains("may be sent again"), "{status:?}");
}

/// `GET path` from a plaintext HTTP/1.1 listener (the admin listener): the
/// whole response, status line first.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
}
