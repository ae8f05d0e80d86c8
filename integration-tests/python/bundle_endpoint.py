"""Fetches a SPIFFE bundle endpoint as a federated peer would, with the
Python standard library only: TLS verified against the trust domain's
roots (the out-of-band bundle, PEM), the server's URI SAN checked against
the expected SPIFFE ID (the https_spiffe profile), and the document checked
against the SPIFFE Trust Domain and Bundle format.

    bundle_endpoint.py URL ROOTS_PEM EXPECTED_SPIFFE_ID

Prints one "ok ..." line per check and, last, the document's sequence.
"""

import base64
import http.client
import json
import ssl
import sys
import urllib.parse


def main() -> None:
    url, roots, expected = sys.argv[1:4]
    context = ssl.create_default_context(cafile=roots)
    # https_spiffe: the peer is its SPIFFE ID, not a host name.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection(
        parsed.hostname, parsed.port or 443, context=context, timeout=10
    )
    connection.request("GET", parsed.path or "/")
    sans = connection.sock.getpeercert().get("subjectAltName", ())
    response = connection.getresponse()
    uris = [value for kind, value in sans if kind == "URI"]
    assert uris == [expected], uris
    print("ok the endpoint presents", expected)
    assert response.status == 200, response.status
    assert response.headers.get_content_type() == "application/json"
    document = json.loads(response.read())
    connection.close()
    assert isinstance(document["spiffe_sequence"], int) and document["spiffe_sequence"] >= 1
    assert isinstance(document["spiffe_refresh_hint"], int)
    print("ok spiffe_sequence and spiffe_refresh_hint")
    with open(roots, encoding="ascii") as f:
        pem = f.read()
    expected_roots = sorted(
        base64.b64decode("".join(block.split("-----")[0].split()))
        for block in pem.split("-----BEGIN CERTIFICATE-----")[1:]
    )
    x509 = [k for k in document["keys"] if k["use"] == "x509-svid"]
    jwt = [k for k in document["keys"] if k["use"] == "jwt-svid"]
    for key in x509:
        assert len(key["x5c"]) == 1, key
        assert key["kty"] == "EC" and key["crv"] == "P-256" and key["x"] and key["y"], key
        assert "kid" not in key, key
    assert sorted(base64.b64decode(k["x5c"][0]) for k in x509) == expected_roots
    print("ok", len(x509), "x509-svid keys, each one CA certificate: the roots")
    assert jwt and all(k["kid"] and k["kty"] for k in jwt), jwt
    print("ok", len(jwt), "jwt-svid keys, each with its kid")
    print(document["spiffe_sequence"])


if __name__ == "__main__":
    main()
