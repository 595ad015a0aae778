"""A TCP gate on 127.0.0.1: forwards a port to a service and can be shut and opened again
on the same port, so a client sees that service stop and come back.

The fault tests use it for the object store: moto's server keeps its buckets and IAM keys
in memory, so stopping its process would lose them (a real S3 or MinIO keeps them across a
restart). A shut gate refuses new connections and cuts open ones, which is what a client
of a stopped server sees.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

BUFFER = 64 * 1024


class TcpGate:
    """``127.0.0.1:port`` -> ``127.0.0.1:target_port`` while open."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._listener: socket.socket | None = None
        self._open_sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.open()

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def open(self) -> None:
        """Listen again (on the same port after the first time)."""
        if self._listener is not None:
            return
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def shut(self) -> None:
        """Refuse new connections and cut the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._open_sockets = self._open_sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # shut
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open_sockets |= {client, upstream}
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Bytes both ways until either side ends (or ``shut`` cuts both)."""
        pair = (client, upstream)
        try:
            while True:
                readable, _, _ = select.select(pair, [], [])
                for sock in readable:
                    data = sock.recv(BUFFER)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except (OSError, ValueError):  # cut by shut (ValueError: select on a closed socket)
            pass
        finally:
            with self._lock:
                self._open_sockets -= set(pair)
            for sock in pair:
                sock.close()
