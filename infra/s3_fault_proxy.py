"""A fault-injecting HTTP proxy on loopback, in front of an S3 server (moto, MinIO) - for tests.

Clients point AWS_ENDPOINT_URL at the proxy; it forwards each request to the upstream server and,
by a deterministic rule, breaks some of them:

    503        answer `503 SlowDown` without forwarding (throttling)
    500-after  forward (the server applies a write), then answer `500 InternalError`: the client
               retries a request that already took effect (idempotency, conditional writes)
    reset      close the connection with a TCP RST before forwarding (connection reset)
    stall      forward, then hold the answer past the client's read timeout (timeout; the
               request took effect)

Rule (`first_attempt`): the first request for each distinct (method, path, query) fails, with the
modes taken in turn; its retry succeeds. So every operation meets exactly one fault, whatever the
concurrency, and nothing can fail forever. `every=N` instead breaks every Nth request.

    proxy = FaultProxy("http://127.0.0.1:5000", stall_s=3).start()
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    ...; proxy.stop(); proxy.counts   # {"503": .., "500-after": .., "reset": .., "stall": .., "ok": ..}
"""
from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("503", "500-after", "reset", "stall")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_ERR = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by "
        "s3_fault_proxy</Message><RequestId>fault</RequestId></Error>")


class FaultProxy:
    def __init__(self, upstream: str, modes: tuple[str, ...] = MODES, rule: str = "first_attempt",
                 every: int = 3, stall_s: float = 3.0, port: int = 0):
        u = urlsplit(upstream)
        self.up_host, self.up_port = u.hostname, u.port or 80
        self.modes, self.rule, self.every, self.stall_s = tuple(modes), rule, every, stall_s
        self.counts = {m: 0 for m in (*MODES, "ok")}
        self.log: list[tuple[str, str, str]] = []          # (method, path, mode) of every request
        self._seen: set[tuple[str, str]] = set()
        self._n = 0
        self._lock = threading.Lock()
        self.enabled = True
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="s3-fault-proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def faults(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "ok")

    # ---- the rule ---------------------------------------------------------------------------------
    def _choose(self, method: str, path: str) -> str:
        with self._lock:
            self._n += 1
            mode = "ok"
            if self.enabled:
                if self.rule == "first_attempt":
                    key = (method, path)
                    if key not in self._seen:
                        self._seen.add(key)
                        mode = self.modes[len(self._seen) % len(self.modes)]
                elif self._n % self.every == 0:
                    mode = self.modes[(self._n // self.every) % len(self.modes)]
            self.counts[mode] += 1
            self.log.append((method, path, mode))
            return mode

    # ---- the handler ------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class of this proxy's server (FaultHandler bound to this proxy)."""
        return type("Handler", (FaultHandler,), {"proxy": self})


class FaultHandler(BaseHTTPRequestHandler):
    """One request through the proxy: read the body, let the proxy pick a fault mode, then answer
    with the fault or with the upstream's response. A subclass per proxy sets `proxy` (the server
    builds a handler per request from a class, so the proxy travels as a class attribute)."""
    protocol_version = "HTTP/1.1"
    proxy: "FaultProxy"

    def log_message(self, *args):            # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            return self.rfile.read(n)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(self.proxy.up_host, self.proxy.up_port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "expect"}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, r.reason, [(k, v) for k, v in r.getheaders() if k.lower() not in _HOP
                                    and k.lower() != "content-length"], data

    def _send(self, status: int, reason: str, headers, data: bytes) -> None:
        self.send_response(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str) -> None:
        data = b"" if self.command == "HEAD" else _ERR.format(code=code).encode()
        self._send(status, code, [("Content-Type", "application/xml")], data)

    def _handle(self) -> None:
        body = self._body()
        mode = self.proxy._choose(self.command, self.path)
        if mode == "503":
            return self._error(503, "SlowDown")
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        status, reason, headers, data = self._forward(body)
        if mode == "500-after":
            return self._error(500, "InternalError")
        if mode == "stall":
            time.sleep(self.proxy.stall_s)
            self.close_connection = True
        try:
            self._send(status, reason, headers, data)
        except OSError:                   # the client gave up (timeout): expected
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


if __name__ == "__main__":        # manual use: python -m embedlake.infra.s3_fault_proxy http://127.0.0.1:9000
    import sys
    p = FaultProxy(sys.argv[1], stall_s=float(sys.argv[2]) if len(sys.argv) > 2 else 3.0).start()
    print(p.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        p.stop()
