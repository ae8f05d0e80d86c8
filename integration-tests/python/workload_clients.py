"""The SPIFFE Workload API as Python users reach it: py-spiffe's
WorkloadApiClient and X509Source, and a default grpcio channel, over the
Unix socket named in SPIFFE_ENDPOINT_SOCKET. None of them sets the HTTP/2
authority: gRPC C-core sends the socket's path.

usage: workload_clients.py unregistered
       workload_clients.py SPIFFE_ID TRUST_DOMAIN [--rotation]
The first expects PERMISSION_DENIED (no registration entry matches this
process); the second every fetch and a validated JWT-SVID, and with
--rotation an X.509-SVID rotated while an X509Source watches (for SVIDs
that live seconds). Prints one line per check and exits 0
only if every one passed.
"""

import os
import sys
import time

import grpc
from spiffe import TrustDomain, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc


checks = []


def check(name, ok, detail=""):
    checks.append(ok)
    print(f"{'ok' if ok else 'FAILED'} {name} {detail}".rstrip())


def unregistered():
    client = WorkloadApiClient(default_timeout=10)
    try:
        client.fetch_x509_svid()
        check("unregistered refused", False, "an SVID was served")
    except Exception as error:  # py-spiffe wraps the gRPC status
        check("unregistered refused", "PERMISSION_DENIED" in str(error), str(error))
    finally:
        client.close()
    return 0 if all(checks) else 1


def main(argv):
    if len(argv) == 2 and argv[1] == "unregistered":
        return unregistered()
    if len(argv) not in (3, 4) or argv[3:] not in ([], ["--rotation"]):
        print(__doc__, file=sys.stderr)
        return 2
    spiffe_id, trust_domain = argv[1], TrustDomain(argv[2])
    rotation = argv[3:] == ["--rotation"]
    socket = os.environ["SPIFFE_ENDPOINT_SOCKET"]

    # A default channel: no authority override, no security header. The
    # spec's answer is INVALID_ARGUMENT, not a reset stream.
    with grpc.insecure_channel(socket) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["ledger"]), timeout=10)
            check("bare call refused", False, "it was answered")
        except grpc.RpcError as error:
            check("bare call refused", error.code() == grpc.StatusCode.INVALID_ARGUMENT,
                  f"{error.code().name}: {error.details()}")

    client = WorkloadApiClient(default_timeout=10)
    svid = client.fetch_x509_svid()
    check("x509 svid", str(svid.spiffe_id) == spiffe_id, str(svid.spiffe_id))
    check("x509 chain", len(svid.cert_chain) >= 1 and svid.private_key is not None)
    bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(trust_domain)
    check("x509 bundle", bundle is not None and len(bundle.x509_authorities) >= 1)
    jwt = client.fetch_jwt_svid(audience={"ledger"})
    check("jwt svid", str(jwt.spiffe_id) == spiffe_id and "ledger" in jwt.audience,
          str(jwt.spiffe_id))
    validated = client.validate_jwt_svid(jwt.token, "ledger")
    check("jwt validated", str(validated.spiffe_id) == spiffe_id)
    jwt_bundles = client.fetch_jwt_bundles()
    check("jwt bundle",
          jwt_bundles.get_bundle_for_trust_domain(trust_domain) is not None)
    client.close()

    # The source watches the stream: a new SVID arrives before the old
    # one's half-life has long passed.
    source = X509Source(timeout_in_seconds=10)
    try:
        def current():
            return source.get_x509_context().default_svid

        first = current()
        check("x509 source", str(first.spiffe_id) == spiffe_id)
        if not rotation:
            return 0 if all(checks) else 1
        deadline = time.monotonic() + 15
        while (current().leaf.serial_number == first.leaf.serial_number
               and time.monotonic() < deadline):
            time.sleep(0.2)
        check("x509 source rotated",
              current().leaf.serial_number != first.leaf.serial_number)
    finally:
        source.close()
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
