"""Envoy's Secret Discovery Service as a client Steward did not write sees
it: the Envoy data-plane protos as the gRPC project ships them for Python
(xds-protos) over a default grpcio channel on the Unix socket named in
SPIFFE_ENDPOINT_SOCKET.

usage: sds_client.py unregistered
       sds_client.py SPIFFE_ID TRUST_DOMAIN_ID
The first expects PERMISSION_DENIED (no registration entry matches this
process). The second subscribes to the workload's certificate and the
trust domain's bundle, checks the chain verifies to the bundle and the key
is the certificate's, ACKs, and waits for a new version after the SVID
(a short-lived one) is renewed; then FetchSecrets for `default`. Prints
one line per check and exits 0 only if every one passed.
"""

import os
import queue
import sys

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

checks = []


def check(name, ok, detail=""):
    checks.append(ok)
    print(f"{'ok' if ok else 'FAILED'} {name} {detail}".rstrip())


def stub():
    channel = grpc.insecure_channel(os.environ["SPIFFE_ENDPOINT_SOCKET"])
    return channel, sds_pb2_grpc.SecretDiscoveryServiceStub(channel)


def request(names, version="", nonce=""):
    return discovery_pb2.DiscoveryRequest(
        version_info=version,
        node=base_pb2.Node(id="sds-test", cluster="steward-tests"),
        resource_names=names,
        type_url=SECRET_TYPE,
        response_nonce=nonce,
    )


def secrets(response):
    out = {}
    for resource in response.resources:
        secret = secret_pb2.Secret()
        resource.Unpack(secret)
        out[secret.name] = secret
    return out


def chain_of(secret):
    pem = secret.tls_certificate.certificate_chain.inline_bytes
    return x509.load_pem_x509_certificates(pem)


def verify(spiffe_id, certificate, bundle):
    chain = chain_of(certificate)
    leaf = chain[0]
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    check("leaf names the workload", uris == [spiffe_id], str(uris))
    roots = x509.load_pem_x509_certificates(
        bundle.validation_context.trusted_ca.inline_bytes
    )
    try:
        for child, parent in zip(chain, chain[1:]):
            child.verify_directly_issued_by(parent)
        top = chain[-1]
        anchored = any(_issued_by(top, root) for root in roots)
        check("chain verifies to the bundle", anchored, f"{len(chain)} certificates")
    except Exception as error:
        check("chain verifies to the bundle", False, str(error))
    key = serialization.load_pem_private_key(
        certificate.tls_certificate.private_key.inline_bytes, password=None
    )
    same = key.public_key().public_numbers() == leaf.public_key().public_numbers()
    check("key is the certificate's", same)
    return leaf


def _issued_by(child, root):
    try:
        child.verify_directly_issued_by(root)
        return True
    except Exception:
        return False


def unregistered():
    channel, sds = stub()
    try:
        sds.FetchSecrets(request(["default"]), timeout=10)
        check("unregistered refused", False, "secrets were served")
    except grpc.RpcError as error:
        check(
            "unregistered refused",
            error.code() == grpc.StatusCode.PERMISSION_DENIED,
            str(error.code()),
        )
    channel.close()


def registered(spiffe_id, trust_domain):
    channel, sds = stub()
    outgoing = queue.Queue()
    outgoing.put(request([spiffe_id, trust_domain]))
    responses = sds.StreamSecrets(iter(outgoing.get, None), timeout=40)
    first = next(responses)
    check("type is Secret", first.type_url == SECRET_TYPE, first.type_url)
    got = secrets(first)
    check("both resources served", sorted(got) == sorted([spiffe_id, trust_domain]), str(sorted(got)))
    leaf = verify(spiffe_id, got[spiffe_id], got[trust_domain])
    # ACK: the version applied, on the response's nonce.
    outgoing.put(request([spiffe_id, trust_domain], first.version_info, first.nonce))
    second = next(responses)
    check(
        "a renewal pushes a new version",
        second.version_info != first.version_info and second.nonce != first.nonce,
        f"{first.version_info} -> {second.version_info}",
    )
    renewed = chain_of(secrets(second)[spiffe_id])[0]
    check("with a new certificate", renewed.serial_number != leaf.serial_number)
    outgoing.put(request([spiffe_id, trust_domain], second.version_info, second.nonce))
    outgoing.put(None)
    responses.cancel()

    fetched = secrets(sds.FetchSecrets(request(["default", "ROOTCA"]), timeout=10))
    check("default and ROOTCA fetched", sorted(fetched) == ["ROOTCA", "default"], str(sorted(fetched)))
    if "default" in fetched and "ROOTCA" in fetched:
        verify(spiffe_id, fetched["default"], fetched["ROOTCA"])
    try:
        sds.FetchSecrets(
            discovery_pb2.DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"),
            timeout=10,
        )
        check("another type refused", False)
    except grpc.RpcError as error:
        check("another type refused", error.code() == grpc.StatusCode.INVALID_ARGUMENT, str(error.code()))
    channel.close()


def main():
    if sys.argv[1:] == ["unregistered"]:
        unregistered()
    else:
        registered(sys.argv[1], sys.argv[2])
    sys.exit(0 if checks and all(checks) else 1)


if __name__ == "__main__":
    main()
