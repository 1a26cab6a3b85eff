"""Health and reflection of a SomaStack service, called with Python grpcio.

grpcio is an independent gRPC + TLS stack (gRPC C-core with BoringSSL): this
proves the services speak standard gRPC over standard mTLS. The client
presents an operator SVID and verifies the server by the DNS SAN the
development authority adds beside the SPIFFE URI SAN.

Usage: health_reflection.py CACERT CERT KEY HOST:PORT SERVICE
Prints one JSON line; exits non-zero on any failure.
"""

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main() -> int:
    cacert, cert, key, target, service = sys.argv[1:6]
    with open(cacert, "rb") as f:
        root = f.read()
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private_key = f.read()
    credentials = grpc.ssl_channel_credentials(root, private_key, chain)
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, credentials, options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        listed = [s.name for s in responses[0].list_services_response.service]
    result = {
        "service": service,
        "status": health_pb2.HealthCheckResponse.ServingStatus.Name(status),
        "listed": listed,
    }
    print(json.dumps(result))
    ok = result["status"] == "SERVING" and service in listed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
