"""Connections, held by one asyncio event loop, so that however slowly clients send, none holds a
thread, and a bounded pool of threads for the requests.

- A request, head and body, must arrive whole within REQUEST_DEADLINE_S: counted from the accept
  for a connection's first request, from its first byte for the next ones on a keep-alive
  connection (which may wait IDLE_TIMEOUT_S for that byte). A timeout per read would let a client
  that sends a byte every few seconds hold its connection for ever.
- Only a complete request reaches a handler, in one of WORKERS threads (/api/spawn waits there).
- At most `max_connections` are open, below the process's open-file limit; further ones wait in
  the kernel's listen queue until one closes (as Go's netutil.LimitListener does).
"""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

REQUEST_DEADLINE_S = 10.0
IDLE_TIMEOUT_S = 60.0
WRITE_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 5.0
MAX_HEADER_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10
WORKERS = 8
MAX_CONNECTIONS = 512
RESERVED_FILES = 32  # descriptors kept for the listener, stderr, /api/spawn's pipes...
LISTEN_BACKLOG = 1024
ACCEPT_RETRY_S = 0.1

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]{1,12})[ \t]*\r\n", re.IGNORECASE)
TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.IGNORECASE)


def refusal(status: str) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


class Refused(Exception):
    """A request the connection answers itself, then closes: `response` is the whole answer."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.response = refusal(status)


def connection_bound(wanted: int) -> int:
    """`wanted`, lowered to what the open-file limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_FILES))


async def read_request(reader: asyncio.StreamReader, deadline: float | None) -> bytes | None:
    """The request's bytes, head and body, or None when the client closed, broke off or was too
    slow. `deadline` (loop time) bounds the whole request; None: wait IDLE_TIMEOUT_S for its first
    byte, then REQUEST_DEADLINE_S from there."""
    loop = asyncio.get_running_loop()
    first = b""
    try:
        if deadline is None:
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                first = await reader.read(1)
            if not first:
                return None
            deadline = loop.time() + REQUEST_DEADLINE_S
        async with asyncio.timeout_at(deadline):
            head = first + await reader.readuntil(b"\r\n\r\n")
            return head + await reader.readexactly(body_size(head))
    except asyncio.LimitOverrunError:
        raise Refused("431 Request Header Fields Too Large") from None
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None


def body_size(head: bytes) -> int:
    """The Content-Length of a request head; the bodies this service cannot frame are refused."""
    if TRANSFER_ENCODING.search(head):
        raise Refused("501 Not Implemented")
    lengths = CONTENT_LENGTH.findall(head)
    if len(lengths) > 1:
        raise Refused("400 Bad Request")
    size = int(lengths[0]) if lengths else 0
    if size > MAX_BODY_BYTES:
        raise Refused("413 Content Too Large")
    return size


class Server:
    """Listens on host:port; `handler_class(request_bytes, client_address, server)` answers one
    request into its `wfile` and says in `close_connection` whether the connection ends there."""

    def __init__(self, host: str, port: int, handler_class: type, max_connections: int = MAX_CONNECTIONS) -> None:
        self.handler_class = handler_class
        self.max_connections = connection_bound(max_connections)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        self.server_address = self.socket.getsockname()
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="hello-py")
        self._open: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()  # connections between requests
        self._stopping = False

    def serve_forever(self, on_stop: Callable[[], None]) -> None:
        """Serve until SIGTERM or SIGINT, then let the requests in flight finish (SHUTDOWN_GRACE_S
        at most); `on_stop` runs when the signal arrives."""
        try:
            asyncio.run(self._serve(on_stop))
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        self.socket.close()

    async def _serve(self, on_stop: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.socket.setblocking(False)
        accepting = asyncio.create_task(self._accept(asyncio.Semaphore(self.max_connections)))
        await stop.wait()
        on_stop()
        self._stopping = True
        accepting.cancel()
        self.socket.close()
        for task in list(self._waiting):
            task.cancel()
        if self._open:
            await asyncio.wait(self._open, timeout=SHUTDOWN_GRACE_S)

    async def _accept(self, slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await slots.acquire()
            try:
                conn, address = await loop.sock_accept(self.socket)
            except OSError:  # out of descriptors, or reset before it was accepted: try again shortly
                slots.release()
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            task = asyncio.create_task(self._connection(conn, address))
            self._open.add(task)
            task.add_done_callback(self._open.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _connection(self, conn: socket.socket, address: tuple) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        deadline: float | None = loop.time() + REQUEST_DEADLINE_S
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEADER_BYTES)
        except OSError:
            conn.close()
            return
        try:
            keep_alive = True
            while keep_alive and not self._stopping:
                self._waiting.add(task)
                try:
                    request = await read_request(reader, deadline)
                except Refused as refused:
                    await self._write(writer, refused.response)
                    return
                finally:
                    self._waiting.discard(task)
                if request is None:
                    return
                response, keep_alive = await loop.run_in_executor(self._pool, self._handle, request, address)
                await self._write(writer, response)
                deadline = None
        except (OSError, TimeoutError):
            writer.transport.abort()  # a client that does not read its answer: drop what is left
        except Exception as exc:  # a bug in a handler: this connection ends, the service goes on
            print(f"hello-py: request from {address[0]} failed: {type(exc).__name__}", file=sys.stderr, flush=True)
        finally:
            writer.close()

    def _handle(self, request: bytes, address: tuple) -> tuple[bytes, bool]:
        handler = self.handler_class(request, address, self)
        return handler.wfile.getvalue(), not handler.close_connection

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()
