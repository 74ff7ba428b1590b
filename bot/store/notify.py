"""Cache invalidation across processes: PostgreSQL LISTEN/NOTIFY on one dedicated connection.

A store that caches rows (guild settings, languages) calls :func:`notify` after a write and
:func:`listen` once with a callback that reloads the key named in the payload. On PostgreSQL one
connection per database object listens (asyncpg ``add_listener``); if it drops, it reconnects with
backoff and calls every ``on_reconnect`` callback, because notifications sent while it was away
are lost and caches must reload. SQLite is one process per file: notify and listen do nothing.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from bot.store.database import Database, DatabaseError

__all__ = ["Listener", "listener", "notify"]

log = logging.getLogger(__name__)

Callback = Callable[[str], Awaitable[None] | None]
Reconnected = Callable[[], Awaitable[None]]

_listeners: weakref.WeakKeyDictionary[Database, Listener] = weakref.WeakKeyDictionary()


async def notify(db: Database, channel: str, payload: str) -> None:
    """Tell every process listening on ``db`` that ``payload`` changed (sent at commit when in a transaction)."""
    if db.dialect == "postgresql":
        await db.execute("SELECT pg_notify(?, ?)", (channel, payload))


def listener(db: Database) -> Listener:
    """The one listener of ``db`` (created on first use; closed with :meth:`Listener.close`)."""
    found = _listeners.get(db)
    if found is None:
        found = _listeners[db] = Listener(db)
    return found


class Listener:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.reconnects = 0
        self._channels: dict[str, list[Callback]] = {}
        self._on_reconnect: list[Reconnected] = []
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._ready = asyncio.Event()
        self._closed = False

    async def listen(self, channel: str, callback: Callback, on_reconnect: Reconnected | None = None) -> None:
        """Call ``callback(payload)`` for each notification on ``channel`` (returns once listening)."""
        if self.db.dialect != "postgresql":
            return
        self._channels.setdefault(channel, []).append(callback)
        if on_reconnect is not None:
            self._on_reconnect.append(on_reconnect)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen:{self.db.describe()}")
            await asyncio.wait({self._task, asyncio.ensure_future(self._ready.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if self._task.done():
                self._task.result()
        elif self._conn is not None:
            await self._conn.add_listener(channel, self._dispatch)

    def _dispatch(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        for callback in list(self._channels.get(channel, ())):
            try:
                result = callback(payload)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(_log_failure)
            except Exception:
                log.exception("cache invalidation for %s failed", channel)

    async def _connect(self) -> Any:
        import asyncpg

        conn = await asyncpg.connect(self.db.url, timeout=10)  # type: ignore[attr-defined]
        for channel in self._channels:
            await conn.add_listener(channel, self._dispatch)
        conn.add_termination_listener(lambda _c: self._lost.set())
        return conn

    async def _run(self) -> None:
        delay = 0.2
        first = True
        while not self._closed:
            try:
                self._conn = await self._connect()
            except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - any failure: retry
                if first:
                    raise DatabaseError(f"cannot listen on {self.db.describe()}: {exc}") from None
                log.warning("Cache invalidation connection to %s failed (%s); retrying in %.1f s",
                            self.db.describe(), exc, delay)
                await asyncio.sleep(delay)  # backoff between reconnects, not synchronisation
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.2
            self._lost.clear()
            if not first:
                self.reconnects += 1
                log.info("Cache invalidation reconnected to %s; reloading caches", self.db.describe())
                for reload in list(self._on_reconnect):
                    try:
                        await reload()
                    except Exception:
                        log.exception("reloading a cache after reconnecting failed")
            first = False
            self._ready.set()
            await self._lost.wait()
            log.warning("Cache invalidation connection to %s was lost; reconnecting", self.db.describe())
            self._conn = None

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(2):
                    await conn.close()
            except Exception:
                conn.terminate()
        _listeners.pop(self.db, None)


async def close_listener(db: Database) -> None:
    found = _listeners.get(db)
    if found is not None:
        await found.close()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cache invalidation failed", exc_info=task.exception())
