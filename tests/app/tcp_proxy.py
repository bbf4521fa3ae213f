"""A loopback TCP proxy that records how each connection to the model server ended.

On a shared engine, vLLM's request counters also count other users' requests; the proxy sees
exactly ours: whether the API closed its connection while vLLM was still streaming an answer
(what makes vLLM abort the request) or only after the answer's `[DONE]`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Connection:
    upstream_bytes: bytearray = field(default_factory=bytearray)
    closed_by_client: bool = False
    """The API side closed while the upstream answer was still coming."""
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def saw_done(self) -> bool:
        return b"data: [DONE]" in self.upstream_bytes


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections: list[Connection] = []
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            record = Connection()
            self.connections.append(record)
            threading.Thread(target=self._pump_up, args=(client, upstream, record), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client, record), daemon=True).start()

    @staticmethod
    def _pump_up(client: socket.socket, upstream: socket.socket, record: Connection) -> None:
        """Client -> model server; an EOF from the client ends the upstream connection too."""
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass
        if not record.finished.is_set():
            record.closed_by_client = True
        for sock in (upstream, client):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _pump_down(upstream: socket.socket, client: socket.socket, record: Connection) -> None:
        """Model server -> client; a client that is gone when more of the answer comes is noted here
        too, since this thread may see it before `_pump_up` does (both run at once)."""
        try:
            while data := upstream.recv(65536):
                record.upstream_bytes += data
                try:
                    client.sendall(data)
                except OSError:
                    record.closed_by_client = True
                    break
        except OSError:
            pass
        record.finished.set()
