"""A real OTLP/gRPC trace receiver, for the trace propagation test.

Serves opentelemetry.proto.collector.trace.v1.TraceService on 127.0.0.1 (a
free port), built from the `opentelemetry-proto` package with grpcio. Prints
`listening PORT`, then one JSON object per span received:
{"trace_id", "span_id", "parent_span_id", "name", "kind", "service", "attributes"}
(ids in lowercase hex, attributes as strings). Runs until killed.

Exports arrive on several server threads at once (the gateway and Analytics
export in their own batches): each line is written whole, under one lock, so
two spans never share a line.
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


OUT = threading.Lock()


def emit(record):
    line = json.dumps(record) + "\n"
    with OUT:
        sys.stdout.write(line)
        sys.stdout.flush()


def value(v):
    kind = v.WhichOneof("value")
    return str(getattr(v, kind)) if kind else ""


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    emit({
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "service": resource.get("service.name", ""),
                        "attributes": {a.key: value(a.value) for a in span.attributes},
                    })
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
