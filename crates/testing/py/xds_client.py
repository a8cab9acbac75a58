#!/usr/bin/env python3
"""A proxyless gRPC client (grpcio's xDS resolver) of trellis.test.Echo.

    xds_client.py --target xds:///reviews:9080 --calls N [--metadata k=v]...
                  [--until-share NAME=PCT --deadline S] [--timeout S]

GRPC_XDS_BOOTSTRAP must name the bootstrap (`trellis bootstrap grpc`).
All calls share one channel, so its balancer's choices are what is counted.
Prints one JSON line: {"calls": N, "by_upstream": {name: count},
"errors": {"CODE: details": count}} where name is the echo server's
`x-upstream` response header.

With --until-share, the script first calls until the last --calls calls
gave NAME at least PCT percent (or the deadline passes), then counts: a
test waits for a pushed change to reach the client this way.
"""

import argparse
import collections
import json
import time

import grpc

METHOD = "/trellis.test.Echo/Unary"


def call_many(fn, n, metadata, timeout):
    by_upstream = collections.Counter()
    errors = collections.Counter()
    for _ in range(n):
        try:
            _, call = fn.with_call(b"hello", timeout=timeout, metadata=metadata)
            md = dict(call.initial_metadata() or ())
            by_upstream[md.get("x-upstream", "?")] += 1
        except grpc.RpcError as err:
            errors[f"{err.code().name}: {err.details()}"] += 1
    return by_upstream, errors


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--metadata", action="append", default=[])
    p.add_argument("--until-share")
    p.add_argument("--deadline", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=10.0, help="per call, seconds")
    args = p.parse_args()
    metadata = [tuple(kv.split("=", 1)) for kv in args.metadata]
    with grpc.insecure_channel(args.target) as channel:
        fn = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        if args.until_share:
            name, pct = args.until_share.split("=")
            end = time.monotonic() + args.deadline
            while time.monotonic() < end:
                seen, _ = call_many(fn, args.calls, metadata, args.timeout)
                if seen[name] * 100 >= float(pct) * args.calls:
                    break
        by_upstream, errors = call_many(fn, args.calls, metadata, args.timeout)
    print(json.dumps({"calls": args.calls, "by_upstream": by_upstream, "errors": errors}))


if __name__ == "__main__":
    main()
