"""The throughput benchmark's server: nginx on loopback answering a fixed introspection body.

`Nginx.start()` renders benchmarks/nginx.conf into a temporary prefix directory, runs nginx in the
foreground as one process on a free port (nothing under /etc, /var or /run), and waits until it
accepts connections; `stop()` ends it and removes the directory. `blast()` measures what the server
can serve: HTTP/1.1 requests pipelined over a few connections, so the client spends next to nothing
per request and the server's own cost is what is measured.

nginx is looked up on PATH and in /usr/sbin; when it is missing and this runs as root with apt-get,
it is installed (`apt-get install -y nginx`). Otherwise `find_nginx()` returns None with the reason,
and the benchmark falls back to benchmarks/server.py, saying so loudly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server import BODY  # the same introspection body as the Python server (benchmarks/ is on sys.path)

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "nginx.conf"


def find_nginx(install: bool = True) -> tuple[str | None, str]:
    """The nginx executable, or None and why not; installs it first where that needs no asking."""
    path = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if path is not None:
        return path, ""
    if not install:
        return None, "nginx is not installed"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "nginx is not installed, and it cannot be installed here (needs root and apt-get)"
    print("installing nginx for the throughput benchmark: apt-get install -y nginx", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return None, f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return find_nginx(install=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Nginx:
    """One nginx process serving the fixed body on 127.0.0.1:`port`."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._prefix: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self._prefix = tempfile.mkdtemp(prefix="moneykit-bench-nginx-")
        body = BODY.decode()
        assert "'" not in body and "\\" not in body and "$" not in body  # nginx's single-quoted string
        for _ in range(5):  # a free port may be taken between the probe and nginx's bind: try another
            self.port = _free_port()
            conf = Path(self._prefix, "nginx.conf")
            conf.write_text(
                CONFIG.read_text()
                .replace("@PREFIX@", self._prefix)
                .replace("@PORT@", str(self.port))
                .replace("@BODY@", body)
            )
            log = Path(self._prefix, "error.log")
            self.process = subprocess.Popen(
                [self.executable, "-p", self._prefix, "-c", str(conf), "-e", str(log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return
                except OSError:
                    time.sleep(0.02)
            self._end()
        detail = Path(self._prefix, "error.log").read_text()[-500:] if self._prefix else ""
        self.stop()
        raise RuntimeError(f"nginx did not start: {detail}")

    def _end(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stop(self) -> None:
        self._end()
        if self._prefix is not None:
            shutil.rmtree(self._prefix, ignore_errors=True)
            self._prefix = None


def _response_size(port: int) -> int:
    """The size in bytes of one answer (the same for every request: the Date header has a fixed width)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head = data.partition(b"\r\n\r\n")[0]
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return len(head) + 4 + length


REQUEST = b"GET /auth/introspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok_000000000\r\n\r\n"


def blast(port: int, seconds: float = 2.0, connections: int = 16, depth: int = 32) -> float:
    """Requests/s the server answers when `connections` connections each keep `depth` requests
    pipelined (run it in a process of its own, on the other core)."""
    size = _response_size(port)
    batch = REQUEST * depth
    answered = 0

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.pending = 0
            self.transport.write(batch)

        def data_received(self, data: bytes) -> None:
            nonlocal answered
            self.pending += len(data)
            done, self.pending = divmod(self.pending, size * depth)
            if done:
                answered += done * depth
                self.transport.write(batch * done)

    async def main() -> float:
        nonlocal answered
        loop = asyncio.get_running_loop()
        clients = [await loop.create_connection(Client, "127.0.0.1", port) for _ in range(connections)]
        await asyncio.sleep(0.3)  # warm up
        answered = 0
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        rate = answered / (time.perf_counter() - started)
        for transport, _ in clients:
            transport.close()
        return rate

    return asyncio.run(main())
