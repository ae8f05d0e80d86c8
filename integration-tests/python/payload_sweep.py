"""Huge values in every text field, sent by a default grpcio channel.

grpcio is what most non-Rust clients are built on: it refuses a status
message over its metadata limit (16 KiB) and an answer over its receive
limit (4 MiB), so a server that echoes what it refuses breaks it. This
script sends each planned value exactly as such a client would and reports
what came back; the Rust test that wrote the plan judges the answers.

usage: payload_sweep.py PLAN.json
PLAN: {"bundle": path, "sizes": [bytes, ...], "shown": the most characters
of a value an answer may show, "calls": [{"target":
"localhost:port", "cert": path, "key": path, "rpc": "/pkg.Service/Method",
"stream": bool, "path": "principal.workload", "numbers": [1, 1], "with":
[[field number, integer], ...]}, ...]}; `with` sets scalar fields beside
the value (an import's format, say), so that the value itself is judged.
Prints one JSON object per value sent: rpc, path, size, code, details, and
of an answer its size and whether it holds the value.
"""

import json
import sys

import grpc


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def nested(numbers, value):
    """`value` as the field at `numbers` (outermost first), on the wire."""
    data = value
    for number in reversed(numbers):
        data = varint(number << 3 | 2) + varint(len(data)) + data
    return data


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        plan = json.load(f)
    with open(plan["bundle"], "rb") as f:
        bundle = f.read()
    channels = {}
    values = {size: b"q" * size for size in plan["sizes"]}
    for call in plan["calls"]:
        key = (call["target"], call["cert"])
        if key not in channels:
            with open(call["cert"], "rb") as c, open(call["key"], "rb") as k:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=bundle, private_key=k.read(), certificate_chain=c.read()
                )
            # Default options: the limits every grpcio user has.
            channels[key] = grpc.secure_channel(call["target"], credentials)
        channel = channels[key]
        for size, value in values.items():
            request = nested(call["numbers"], value) + b"".join(
                varint(number << 3) + varint(integer) for number, integer in call["with"]
            )
            try:
                if call["stream"]:
                    method = channel.unary_stream(call["rpc"])
                    answer = b"".join(method(request, timeout=30))
                else:
                    answer = channel.unary_unary(call["rpc"])(request, timeout=30)
                code, details = "OK", ""
            except grpc.RpcError as error:
                code, details, answer = error.code().name, error.details() or "", b""
            print(
                json.dumps(
                    {
                        "rpc": call["rpc"],
                        "path": call["path"],
                        "size": size,
                        "code": code,
                        "details": details,
                        "answer_bytes": len(answer),
                        "answer_echoes": b"q" * (plan["shown"] + 1) in answer,
                    }
                ),
                flush=True,
            )
    for channel in channels.values():
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
