"""A stand-in for trellis-proxy in ProxyProcess's own tests.

    fake_proxy.py --mode {ok,exit,hang,garbage} --addr-file PATH

ok: binds outbound, inbound and an admin HTTP server (GET /ready -> 200
"ready", else 404), writes the addr file atomically, serves until killed.
"""

import argparse
import http.server
import json
import os
import socket
import sys
import time


class Admin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ready\n" if self.path == "/ready" else f"no route {self.path}\n".encode()
        self.send_response(200 if self.path == "/ready" else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("admin: " + (fmt % args) + "\n")
        sys.stderr.flush()


def listen():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="ok")
    p.add_argument("--addr-file", required=True)
    args = p.parse_args()
    print("fake-proxy: stdout hello", flush=True)
    print(f"fake-proxy: starting in mode {args.mode}", file=sys.stderr, flush=True)
    if args.mode == "exit":
        print("error: config.yaml: listeners[0].port: expected a number", file=sys.stderr)
        return 3
    if args.mode == "hang":
        time.sleep(3600)
        return 0
    tmp = args.addr_file + ".tmp"
    if args.mode == "garbage":
        with open(tmp, "w") as f:
            f.write("not json")
        os.rename(tmp, args.addr_file)
        time.sleep(3600)
        return 0
    outbound, inbound = listen(), listen()
    admin = http.server.HTTPServer(("127.0.0.1", 0), Admin)
    addrs = {
        "outbound": "127.0.0.1:%d" % outbound.getsockname()[1],
        "inbound": "127.0.0.1:%d" % inbound.getsockname()[1],
        "admin": "127.0.0.1:%d" % admin.server_address[1],
    }
    with open(tmp, "w") as f:
        json.dump(addrs, f)
    os.rename(tmp, args.addr_file)
    print("fake-proxy: listening", file=sys.stderr, flush=True)
    admin.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
