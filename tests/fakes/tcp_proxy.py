"""A TCP proxy on 127.0.0.1 in front of a real server (PostgreSQL in the storage tests) that can answer
late or go away.

``delay``: seconds added before each chunk the server sends reaches the client (every reply is that
much late, as a far or overloaded database would be). ``cut()``: every open connection is reset and
new ones are refused until ``restore()`` (the database restarting, a network partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.connections = 0  # accepted so far
        self.refused = 0  # turned away while cut
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False
        self.port = 0

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every connection now and refuse new ones."""
        self._cut = True
        self._close_all()

    def restore(self) -> None:
        self._cut = False

    def _close_all(self) -> None:
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER 0: a reset, as a crashed server or a dropped route looks to the client.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.close()
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        if self._cut:  # cut while this one was being connected upstream: it must not outlive the cut
            self.refused += 1
            up_writer.close()
            writer.close()
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for name, (src, dst, late) in {"up": (reader, up_writer, False), "down": (up_reader, writer, True)}.items():
            task = asyncio.create_task(self._pump(src, dst, late, pair), name=f"proxy-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, late: bool,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if late and self.delay > 0:
                    await asyncio.sleep(self.delay)  # the injected latency itself
                if pair not in self._pairs:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pair in self._pairs:
                self._pairs.discard(pair)
                for w in pair:
                    w.close()
