"""The SMS store for tests, built as the composition root builds it: on the one database, with its opt-outs."""

from __future__ import annotations

from typing import Any

from bot.privacy import open_opt_outs
from bot.sms.store import SmsStore, open_sms_store
from bot.store import Database


async def sms_store(db: Database, **kwargs: Any) -> SmsStore:
    """SMS records and opt-outs on ``db`` (the test closes ``db`` itself)."""
    return await open_sms_store(db, opt_outs=await open_opt_outs(db), **kwargs)
