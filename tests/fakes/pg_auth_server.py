"""A PostgreSQL server that asks for a password and refuses every one (wire protocol v3).

The machine's PostgreSQL trusts every local login, so a wrong password cannot be provoked there; this
answers a client's StartupMessage with AuthenticationCleartextPassword and its PasswordMessage with
the ErrorResponse a real server sends (SQLSTATE 28P01), which asyncpg turns into InvalidPasswordError.
"""

from __future__ import annotations

import asyncio
import struct

__all__ = ["RefusingPostgres"]


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


class RefusingPostgres:
    def __init__(self) -> None:
        self.port = 0
        self.attempts = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RefusingPostgres:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                body = await reader.readexactly(length - 4)
                (code,) = struct.unpack("!I", body[:4])
                if code == 80877103:  # SSLRequest: no TLS here
                    writer.write(b"N")
                    await writer.drain()
                    continue
                break  # the StartupMessage
            writer.write(_message(b"R", struct.pack("!I", 3)))  # AuthenticationCleartextPassword
            await writer.drain()
            await reader.readexactly(1)  # 'p'
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            await reader.readexactly(length - 4)
            self.attempts += 1
            fields = b"SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed for user \"bot\"\x00\x00"
            writer.write(_message(b"E", fields))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
