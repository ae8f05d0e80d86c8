"""A plain grpcio client: checks gRPC health on Steward endpoints using only
the trust bundle, an X.509-SVID and the host name `localhost`.

This is what a client nobody on the team wrote does. grpcio verifies the
server by host name (the DNS SAN beside the SPIFFE URI SAN) and sends
`localhost` as SNI.

usage: health_check.py BUNDLE CERT KEY HOST:PORT [HOST:PORT ...]
Prints one line per endpoint and exits 0 only if every one is SERVING.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv):
    if len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    bundle, cert, key = (open(path, "rb").read() for path in argv[1:4])
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle, private_key=key, certificate_chain=cert
    )
    failures = 0
    for target in argv[4:]:
        with grpc.secure_channel(target, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                status = f"ERROR {error.code().name}: {error.details()}"
        print(f"{target} {status}")
        if status != "SERVING":
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
