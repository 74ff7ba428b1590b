"""The SMS side's store: the message records and leases (:mod:`bot.store.sms`) joined with opt-outs.

Opt-outs are kept by the privacy store as keyed subjects (never the raw number), so they outlive
``/forget``; :class:`SmsStore` asks it by the number's identity ``phone:{e164}``. The opt-out list
is handed in by the composition root; its methods may be plain or coroutines (both are awaited
the same way), so it can move onto the async store without this module changing.

:class:`PhoneLinker` is the Discord side of linking a phone (codes, listing and removing links).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from bot.store.database import Database
from bot.store.leases import LeaseOwner
from bot.store.sms import (
    DEDUPE_RETENTION,
    LEASE_SECONDS,
    LINK_CODE_TTL,
    RATE_WINDOW,
    UNFINISHED,
    Admission,
    Claim,
    LinkCode,
    PendingSms,
    PhoneLink,
    SmsRecords,
)

if TYPE_CHECKING:
    from bot.memory import Memory

__all__ = ["Admission", "Claim", "LinkCode", "OptOutList", "PendingSms", "PhoneLink", "PhoneLinker", "SmsStore",
           "DEDUPE_RETENTION", "LEASE_SECONDS", "LINK_CODE_TTL", "RATE_WINDOW", "UNFINISHED", "open_sms_store"]

log = logging.getLogger(__name__)


class OptOutList(Protocol):
    """What the SMS side needs of the opt-out store (bot.privacy.OptOuts); methods may be async."""

    def has(self, identity: str) -> Any: ...

    def add(self, identity: str, channel: str, source: str) -> Any: ...

    def remove(self, identity: str) -> Any: ...


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class SmsStore(SmsRecords):
    """The SMS records (dedupe, state machine, leases, rate limit, link codes) plus opt-outs."""

    def __init__(self, db: Database, *, opt_outs: OptOutList | None = None, clock: Callable[[], float] = time.time,
                 owner: LeaseOwner | None = None, lease: float = LEASE_SECONDS) -> None:
        super().__init__(db, clock=clock, owner=owner, lease=lease)
        self.opt_outs = opt_outs

    def _opt_out_list(self) -> OptOutList:
        if self.opt_outs is None:
            raise RuntimeError("this SmsStore was built without an opt-out list")
        return self.opt_outs

    async def set_opted_out(self, number: str, source: str) -> None:
        """Remember that ``number`` opted out (``source``: ``"keyword"`` or ``"twilio:21610"``)."""
        await _result(self._opt_out_list().add(f"phone:{number}", "sms", source))

    async def clear_opt_out(self, number: str) -> bool:
        """Forget an opt-out (the person texted START); True if there was one."""
        return bool(await _result(self._opt_out_list().remove(f"phone:{number}")))

    async def is_opted_out(self, number: str) -> bool:
        return bool(await _result(self._opt_out_list().has(f"phone:{number}")))


async def open_sms_store(db: Database, **kwargs: Any) -> SmsStore:
    """An :class:`SmsStore` on ``db`` with its tables migrated."""
    store = SmsStore(db, **kwargs)
    await store.migrate()
    return store


class PhoneLinker:
    """The Discord side of linking a phone: hand out codes, list and remove links.

    The SMS side (a code texted in) is :meth:`SmsService.handle`, which calls
    :meth:`SmsStore.consume_link_code` and ``Memory.link_identities``.
    """

    def __init__(self, store: SmsRecords, memory: Memory) -> None:
        self.store = store
        self.memory = memory

    async def start(self, identity: str, display_name: str) -> LinkCode:
        """A fresh one-time code for ``identity`` (e.g. ``discord:123``)."""
        code = await self.store.create_link_code(identity, display_name)
        log.info("Link code issued for %s", identity)
        return code

    async def linked_numbers(self, identity: str) -> list[str]:
        """Phone numbers linked to ``identity`` that memory still links (``/forget`` removes them)."""
        known = await self.memory.identities_of(identity)
        return [link.number for link in await self.store.links_for_identity(identity)
                if f"phone:{link.number}" in known]

    async def unlink(self, identity: str) -> list[str]:
        """Remove every phone linked to ``identity``; returns the numbers unlinked."""
        removed = await self.store.remove_links(identity)
        for link in removed:
            await self.memory.unlink_identity(f"phone:{link.number}")
        log.info("Unlinked %d phone(s) from %s", len(removed), identity)
        return [link.number for link in removed]
