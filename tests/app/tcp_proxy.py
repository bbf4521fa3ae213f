"""A loopback TCP proxy that records how each connection to the model server ended, and can
play the engine's faults.

On a shared engine, vLLM's request counters also count other users' requests; the proxy sees
exactly ours: whether the API closed its connection while vLLM was still streaming an answer
(what makes vLLM abort the request) or only after the answer's `[DONE]`.

Faults (for the reliability tests): `cut()` drops every open connection at once, as an engine
that dies mid-answer does (both sides see the connection end: vLLM aborts the request, the client
gets a broken stream); `refuse = True` closes new connections at once, as a dead engine's port
does, until set back to False ("the engine is back"); `delay_s` holds every piece of the answer
that long before passing it on, as an overloaded engine does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Connection:
    client_bytes: bytearray = field(default_factory=bytearray)
    """What the client sent (the HTTP requests to the model server)."""
    upstream_bytes: bytearray = field(default_factory=bytearray)
    closed_by_client: bool = False
    """The API side closed while the upstream answer was still coming."""
    finished: threading.Event = field(default_factory=threading.Event)
    sockets: tuple[socket.socket, ...] = ()

    @property
    def saw_done(self) -> bool:
        return b"data: [DONE]" in self.upstream_bytes


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections: list[Connection] = []
        self.refuse = False
        """Close new connections at once (the engine's port is dead)."""
        self.delay_s = 0.0
        """Hold each piece of the answer this long (a slow engine)."""
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.close()
        self.cut()

    def cut(self) -> None:
        """Drop every open connection, on both sides, as an engine that dies does."""
        for record in list(self.connections):
            for sock in record.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            upstream = socket.create_connection(self._target)
            record = Connection(sockets=(client, upstream))
            self.connections.append(record)
            up = (client, upstream, record)
            threading.Thread(target=self._pump_up, args=up, name="tcp-proxy-up", daemon=True).start()
            down = (upstream, client, record)
            threading.Thread(target=self._pump_down, args=down, name="tcp-proxy-down", daemon=True).start()

    @staticmethod
    def _pump_up(client: socket.socket, upstream: socket.socket, record: Connection) -> None:
        """Client -> model server; an EOF from the client ends the upstream connection too."""
        try:
            while data := client.recv(65536):
                record.client_bytes += data
                upstream.sendall(data)
        except OSError:
            pass
        if not record.finished.is_set():
            record.closed_by_client = True
        for sock in (upstream, client):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _pump_down(self, upstream: socket.socket, client: socket.socket, record: Connection) -> None:
        """Model server -> client; a client that is gone when more of the answer comes is noted here
        too, since this thread may see it before `_pump_up` does (both run at once)."""
        try:
            while data := upstream.recv(65536):
                if self.delay_s:
                    time.sleep(self.delay_s)
                record.upstream_bytes += data
                try:
                    client.sendall(data)
                except OSError:
                    record.closed_by_client = True
                    break
        except OSError:
            pass
        record.finished.set()
