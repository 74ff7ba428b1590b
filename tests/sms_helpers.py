"""SMS stores for tests that keep the rest of the bot on the synchronous SQLite ``bot.db`` (memory, opt-outs)."""

from __future__ import annotations

from typing import Any

from bot.db import Database as SyncDatabase
from bot.privacy import OptOuts
from bot.sms.store import SmsStore, open_sms_store
from bot.store import SqliteDatabase


async def sms_store(db: SyncDatabase, **kwargs: Any) -> SmsStore:
    """SMS records on ``db``'s SQLite file (a private in-memory database when ``db`` is in memory),
    opt-outs on ``db`` as the composition root builds them. Close with ``await store.db.close()``."""
    return await open_sms_store(SqliteDatabase(db.path or ":memory:"), opt_outs=OptOuts(db), **kwargs)
