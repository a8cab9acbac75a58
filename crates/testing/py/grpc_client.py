#!/usr/bin/env python3
"""A real gRPC client (grpcio) for the test service trellis.test.Echo.

Messages are opaque bytes (no protobuf): the channel is used with
request_serializer=None and response_deserializer=None.

    grpc_client.py --target HOST:PORT --authority NAME {unary,stream,fail}
                   [--messages N] [--message TEXT] [--metadata k=v]... [--timeout S]

Prints one JSON line:
    {"mode", "code": "OK"|..., "details", "messages": [str],
     "initial_metadata": {k: v|[v]}, "trailing_metadata": {k: v|[v]},
     "interleaved": bool|null}
and exits 0 even when the call ends with a gRPC error status.

In stream mode, message i+1 is sent only after the reply to message i came
back ("interleaved": true): this proves the server, and every proxy between,
streams message by message rather than buffering the call.
"""

import argparse
import json
import queue
import sys

import grpc

SERVICE = "/trellis.test.Echo/"
STOP = object()


def metadata_dict(md):
    out = {}
    for key, value in md or ():
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[key] = value
    return out


def text(b):
    return b.decode("utf-8", errors="replace")


def result(mode, call, messages, interleaved=None):
    code = call.code()
    return {
        "mode": mode,
        "code": code.name if code is not None else None,
        "details": call.details() or None,
        "messages": [text(m) for m in messages],
        "initial_metadata": metadata_dict(call.initial_metadata()),
        "trailing_metadata": metadata_dict(call.trailing_metadata()),
        "interleaved": interleaved,
    }


def unary(channel, args, method, metadata):
    fn = channel.unary_unary(
        SERVICE + method, request_serializer=None, response_deserializer=None
    )
    try:
        response, call = fn.with_call(
            args.message.encode(), timeout=args.timeout, metadata=metadata
        )
        return result(args.mode, call, [response])
    except grpc.RpcError as err:  # the error is the call itself
        return result(args.mode, err, [])


def stream(channel, args, metadata):
    fn = channel.stream_stream(
        SERVICE + "Stream", request_serializer=None, response_deserializer=None
    )
    replies = queue.Queue()
    state = {"interleaved": True}
    wait = max(args.timeout / 4, 0.5)

    def requests():
        for i in range(args.messages):
            yield f"msg-{i}".encode()
            if i + 1 == args.messages:
                return
            try:
                item = replies.get(timeout=wait)
            except queue.Empty:
                # No reply before the next send: the path buffers. Send the
                # rest at once so the call can still finish and report.
                state["interleaved"] = False
                for j in range(i + 1, args.messages):
                    yield f"msg-{j}".encode()
                return
            if item is STOP:
                return

    call = fn(requests(), timeout=args.timeout, metadata=metadata)
    messages = []
    try:
        for message in call:
            messages.append(message)
            replies.put(None)
    except grpc.RpcError:
        pass
    finally:
        replies.put(STOP)
    return result(args.mode, call, messages, state["interleaved"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to connect to")
    parser.add_argument("--authority", help="the :authority to send (grpc.default_authority)")
    parser.add_argument("mode", choices=["unary", "stream", "fail"])
    parser.add_argument("--messages", type=int, default=3, help="messages to stream")
    parser.add_argument("--message", default="hello", help="the unary request")
    parser.add_argument("--metadata", action="append", default=[], metavar="K=V")
    parser.add_argument("--timeout", type=float, default=10.0, help="call deadline, seconds")
    args = parser.parse_args()

    metadata = []
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--metadata expects K=V, got {item!r}")
        metadata.append((key.lower(), value))

    options = []
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    with grpc.insecure_channel(args.target, options=options) as channel:
        if args.mode == "unary":
            out = unary(channel, args, "Unary", metadata)
        elif args.mode == "fail":
            out = unary(channel, args, "Fail", metadata)
        else:
            out = stream(channel, args, metadata)
    print(json.dumps(out, sort_keys=True))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
