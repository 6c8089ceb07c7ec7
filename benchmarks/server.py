"""A deliberately minimal HTTP/1.1 keep-alive server for the benchmark, run in its own process.

It answers every request with the same MoneyKit introspection body, parsing only enough to find the
end of each request's headers, so the client under test is the bottleneck, not the server (the
harness reports this process's CPU use to check that).

    python benchmarks/server.py PORT_FILE
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

BODY = json.dumps(
    {
        "client_id": "live_5c739a369515e10fc9e0",
        "client_name": "My App (Prod)",
        "scope": "link_session:create link:data:read link:data:refresh institutions:read",
        "app": {
            "app_id": "3d18cdd1-fa96-4423-b781-bd5be036830e",
            "name": "My App",
            "id": "3d18cdd1-fa96-4423-b781-bd5be036830e",
            "app_name": "My App",
        },
        "disabled_at": None,
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\nConnection: keep-alive\r\n\r\n"
    + BODY
)


class Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        complete = buffer.count(b"\r\n\r\n")  # GET requests: no bodies to skip
        if complete:
            self.transport.write(RESPONSE * complete)
            buffer = buffer[buffer.rindex(b"\r\n\r\n") + 4 :]
        self.buffer = buffer


async def main(port_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    Path(port_file + ".tmp").write_text(str(port))  # noqa: ASYNC240 - once, before serving
    os.replace(port_file + ".tmp", port_file)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
