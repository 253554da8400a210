#!/usr/bin/python3
"""A gRPC health server (grpc.health.v1.Health/Check) for the probe tests,
on Debian's python3-grpcio, without generated code: the two messages are
one field each and are encoded by hand.

    grpc_health.py PORT STATUS_FILE

The answer for any service is the word in STATUS_FILE (SERVING,
NOT_SERVING, UNKNOWN), read at every call; the service "missing" gets
NOT_FOUND, as the reference health server answers an unknown service.
"""
import concurrent.futures
import sys

import grpc

STATUS = {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2, "SERVICE_UNKNOWN": 3}


def service_of(request: bytes) -> str:
    # Field 1, wire type 2 (length-delimited): 0x0a, length, bytes.
    if len(request) >= 2 and request[0] == 0x0A:
        return request[2 : 2 + request[1]].decode()
    return ""


def main():
    port, status_file = sys.argv[1], sys.argv[2]

    def check(request, context):
        if service_of(request) == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        with open(status_file) as f:
            word = f.read().strip()
        return bytes([0x08, STATUS.get(word, 0)])

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(check)},
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(f"grpc health server on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
