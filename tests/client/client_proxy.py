"""A small TCP proxy for the reconnect tests: forwards bytes both ways and can hold either
direction (bytes are read but not delivered) and cut every open connection."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._up = threading.Event()  # client -> server flowing
        self._down = threading.Event()  # server -> client flowing
        self._up.set()
        self._down.set()
        self.connections = 0
        self.bytes_up = 0
        self._closed = False
        self._spawn(self._accept)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, fn: object, *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self.connections += 1
            self._spawn(self._pump, client, upstream, self._up, True)
            self._spawn(self._pump, upstream, client, self._down, False)

    def _pump(
        self, src: socket.socket, dst: socket.socket, gate: threading.Event, up: bool
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                gate.wait()
                if up:
                    self.bytes_up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def hold_requests(self) -> None:
        """Bytes from the client are read but not delivered (lost when cut)."""
        self._up.clear()

    def hold_replies(self) -> None:
        """Bytes from the server are read but not delivered (lost when cut)."""
        self._down.clear()

    def cut(self) -> None:
        """Reset every open connection (held bytes are dropped); new connections work again."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._up.set()
        self._down.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self.cut()
        for t in self._threads:
            t.join(5)
