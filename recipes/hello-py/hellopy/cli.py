"""Flags (the same as hello-go's), start-up checks and a graceful stop on SIGTERM."""

from __future__ import annotations

import argparse
import os
import sys
import time

from hellopy import VERSION
from hellopy.spawn import SPAWN_ENV, exit_with_orphan

# The server's modules (asyncio, http.server...) are imported by `run` only: /api/spawn's children
# (-orphan, -exit-after) start a fresh interpreter each, which takes seconds under emulation.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hello-py", description="PiSec's reference Python payload")
    parser.add_argument("-listen", default=":8080", help="address to listen on (host:port)")
    parser.add_argument("-token-file", default="",
                        help="file holding the bearer token for /debug/logs (missing or empty: /debug/logs disabled)")
    parser.add_argument("-log-records", type=int, default=512, help="records kept in the /debug/logs window")
    parser.add_argument("-log-record-bytes", type=int, default=2048, help="maximum size of one stored record")
    parser.add_argument("-max-connections", type=int, default=None,
                        help="connections open at once (default 512, lowered to fit the open-file limit); more wait")
    parser.add_argument("-orphan", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-exit-after", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.exit_after > 0:
        time.sleep(args.exit_after)
        return 0
    if args.orphan:
        exit_with_orphan()
    try:
        return run(args)
    except (OSError, ValueError) as exc:
        print(f"hello-py: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from hellopy.connection import MAX_CONNECTIONS
    from hellopy.logwindow import MIN_RECORD_BYTES, LogWindow
    from hellopy.service import Service, make_server

    if os.geteuid() == 0:
        raise ValueError("refusing to run as root: start it as the recipe's service user")
    if args.log_records < 1 or args.log_record_bytes < MIN_RECORD_BYTES:
        raise ValueError(f"-log-records must be at least 1 and -log-record-bytes at least {MIN_RECORD_BYTES}")
    max_connections = MAX_CONNECTIONS if args.max_connections is None else args.max_connections
    if max_connections < 1:
        raise ValueError("-max-connections must be at least 1")
    host, port = split_listen(args.listen)
    service = Service(read_token(args.token_file), LogWindow(args.log_records, args.log_record_bytes),
                      spawn_served=os.environ.get(SPAWN_ENV) == "1")
    server = make_server(host, port, service, max_connections)
    bound_host, bound_port = server.server_address[:2]
    print(f"hello-py: at most {server.max_connections} connections open at once", file=sys.stderr, flush=True)
    print(f"hello-py {VERSION}: listening on {bound_host}:{bound_port}", file=sys.stderr, flush=True)
    server.serve_forever(on_stop=lambda: print("hello-py: SIGTERM, shutting down", file=sys.stderr, flush=True))
    server.server_close()
    print("hello-py: stopped", file=sys.stderr, flush=True)
    return 0


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"-listen {listen!r}: expected host:port or :port")
    return host.strip("[]") or "0.0.0.0", int(port)


def read_token(path: str) -> str:
    """The token, or "" (and why, on stderr) when /debug/logs must stay disabled."""
    if not path:
        print("hello-py: no -token-file: /debug/logs disabled", file=sys.stderr)
        return ""
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"hello-py: token file unreadable ({exc}): /debug/logs disabled", file=sys.stderr)
        return ""
    if not token:
        print("hello-py: token file is empty: /debug/logs disabled", file=sys.stderr)
    return token
