"""A TCP relay in front of a server that can go down and come back: what the daemon and the
workers see of a broker restart (every connection dropped, new ones refused, then accepted
again on the same port), without restarting the broker other tests share. It also puts a
server of this machine's loopback (PostgreSQL, the broker) at an address that hosts in network
namespaces reach (tests/dagster/network.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class Relay:
    def __init__(self, url: str, listen: str = "127.0.0.1") -> None:
        """``url``: the server's (``pyamqp://user:password@host:port/vhost``, a database URL);
        ``listen``: the address the relay listens at, which ``.url`` names instead."""
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self._host = listen
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.dropped = 0  # connections cut by down()
        self._server = self._listen(0)
        self._port = self._server.getsockname()[1]
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{listen}:{self._port}"
        self.url = urlunsplit(
            parts._replace(netloc=f"{credentials}@{netloc}" if credentials else netloc)
        )

    def _listen(self, port: int) -> socket.socket:
        server = socket.create_server((self._host, port), reuse_port=False)
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return server

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:  # closed: the broker is down
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._open.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def down(self) -> None:
        """Every connection cut and the port closed (a connection is refused) until up()."""
        with contextlib.suppress(OSError):  # wakes the accept() under way: it stops listening
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            cut = list(self._open)
        self.dropped += len(cut)
        for s in cut:
            self._close(s)

    def up(self) -> None:
        self._server = self._listen(self._port)

    def close(self) -> None:
        self.down()
