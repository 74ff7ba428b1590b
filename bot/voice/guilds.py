"""Per-guild voice settings and the voice opt-out list, kept in the store (bot/store/guilds.py) and cached here.

Guild settings hold only what an admin changed; anything unset falls back to the bot's settings
(``VOICE_MODE``, ``VOICE_IDLE_LEAVE_SECONDS``...), so changing a default in ``.env`` reaches every
guild that never chose otherwise.

Opt-outs are per person and global across guilds: someone who said no in one server has said no to
the bot, not to a server. The set is read on discord.py's socket thread for every voice packet (the
receive filter), so it is kept in memory as an immutable snapshot replaced on every change; reading
it takes no lock and touches no database.

Reads never touch the database either: every guild's rows are loaded when the store opens (a bot
has tens to thousands of guilds, a few hundred bytes each) and kept current by writes here and, on
PostgreSQL, by LISTEN/NOTIFY from the other processes (bot/store/notify.py).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.store import Database
from bot.store.guilds import CHANNEL, GuildRows
from bot.store.notify import listener, notify
from bot.settings import Settings
from bot.voice.turns import VoiceMode

if TYPE_CHECKING:
    from bot.store.optouts import OptOuts

__all__ = ["GuildVoiceSettings", "GuildSettingsStore", "OptOutList", "GuildSettingsError", "MAX_IDLE_LEAVE_SECONDS",
           "AUTO_JOIN", "ALLOWED"]

log = logging.getLogger(__name__)

MAX_IDLE_LEAVE_SECONDS = 86_400
MAX_VOICE_ID_LENGTH = 128

AUTO_JOIN = "auto_join"
ALLOWED = "allowed"
MAX_LISTED_CHANNELS = 25


class GuildSettingsError(ValueError):
    """A setting value that cannot be stored; the message is safe to show to an admin.

    ``key``/``values``: the catalog message (bot.i18n) to show instead, in the admin's language.
    """

    def __init__(self, message: str, *, key: str | None = None, **values: object) -> None:
        super().__init__(message)
        self.key = key
        self.values = values


@dataclass(frozen=True)
class GuildVoiceSettings:
    """One guild's effective voice settings (its own choices over the bot's defaults)."""

    guild_id: int
    mode: str
    voice_id: str | None  # None: the character's or the configured voice
    mirror_transcripts: bool
    idle_leave_seconds: int  # 0: never leave for lack of company
    record_audio: bool  # the admin's consent; recording also needs RECORD_AUDIO=true
    include_bots: bool = False  # hear other bots in the voice channel (ignored before decryption by default)

    def recording_allowed(self, settings: Settings) -> bool:
        """Audio may be written to disk only when the admin enabled it AND the operator allows it."""
        return self.record_audio and settings.record_audio


def _validate(field: str, value: Any) -> Any:
    if field == "mode":
        if value is not None and value not in VoiceMode.ALL:
            raise GuildSettingsError(f"Unknown mode {value!r}; choose one of {', '.join(VoiceMode.ALL)}.")
    elif field == "voice_id":
        if value is not None:
            value = str(value).strip()
            if not value or len(value) > MAX_VOICE_ID_LENGTH or any(c.isspace() for c in value):
                raise GuildSettingsError("That voice id doesn't look right (no spaces, at most 128 characters).")
    elif field == "idle_leave_seconds":
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_IDLE_LEAVE_SECONDS:
                raise GuildSettingsError(f"Idle time must be a whole number of seconds from 0 to {MAX_IDLE_LEAVE_SECONDS}.")
    elif field in ("mirror_transcripts", "record_audio", "include_bots"):
        if not isinstance(value, bool):
            raise GuildSettingsError(f"{field} must be true or false.")
    else:
        raise GuildSettingsError(f"Unknown setting {field!r}.")
    return value


class GuildSettingsStore:
    """Reads (from memory) and writes per-guild voice settings; defaults come from the bot's :class:`Settings`.

    Open with :meth:`open`. ``get``/``channels``/``may_join`` are synchronous and never wait on the database.
    """

    COMPONENT = "guilds"

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._rows = GuildRows(db)
        self._settings = settings
        self._cache: dict[int, dict[str, Any]] = {}
        self._channels: dict[tuple[int, str], frozenset[int]] = {}

    @classmethod
    async def open(cls, db: Database, settings: Settings) -> GuildSettingsStore:
        store = cls(db, settings)
        await store._rows.migrate()
        await store.reload()
        await listener(db).listen(CHANNEL, store._changed, store.reload)
        return store

    async def reload(self, guild_id: int | None = None) -> None:
        """Read the rows again (every guild, or one) into the cache."""
        rows = await self._rows.settings(guild_id)
        channels = await self._rows.channels(guild_id)
        fresh_channels: dict[tuple[int, str], set[int]] = {}
        for gid, cid, kind in channels:
            fresh_channels.setdefault((gid, kind), set()).add(cid)
        if guild_id is None:
            self._cache = {int(r["guild_id"]): dict(r) for r in rows}
            self._channels = {k: frozenset(v) for k, v in fresh_channels.items()}
            return
        if rows:
            self._cache[guild_id] = dict(rows[0])
        else:
            self._cache.pop(guild_id, None)
        for kind in (AUTO_JOIN, ALLOWED):
            found = fresh_channels.get((guild_id, kind))
            if found:
                self._channels[(guild_id, kind)] = frozenset(found)
            else:
                self._channels.pop((guild_id, kind), None)

    async def _changed(self, payload: str) -> None:
        if payload.isdigit():
            await self.reload(int(payload))

    async def _written(self, guild_id: int) -> None:
        await self.reload(guild_id)
        await notify(self._db, CHANNEL, str(guild_id))

    def get(self, guild_id: int) -> GuildVoiceSettings:
        """The guild's effective settings (defaults for anything it never set)."""
        row = self._cache.get(guild_id)
        s = self._settings
        if row is None:
            return GuildVoiceSettings(guild_id, mode=s.voice_mode, voice_id=None, mirror_transcripts=False,
                                      idle_leave_seconds=s.voice_idle_leave_seconds, record_audio=False)
        mode = row["mode"] if row["mode"] in VoiceMode.ALL else s.voice_mode
        idle = row["idle_leave_seconds"]
        return GuildVoiceSettings(
            guild_id,
            mode=mode,
            voice_id=row["voice_id"],
            mirror_transcripts=bool(row["mirror_transcripts"]),
            idle_leave_seconds=s.voice_idle_leave_seconds if idle is None else int(idle),
            record_audio=bool(row["record_audio"]),
            include_bots=bool(row["include_bots"]),
        )

    async def update(self, guild_id: int, /, **changes: Any) -> GuildVoiceSettings:
        """Store some settings for a guild and return the effective result.

        ``mode``, ``voice_id`` and ``idle_leave_seconds`` accept None to go back to the default.
        Raises :class:`GuildSettingsError` (nothing stored) if any value is invalid.
        """
        fields = {f.name for f in dataclasses.fields(GuildVoiceSettings)} - {"guild_id"}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in fields:
                raise GuildSettingsError(f"Unknown setting {name!r}.")
            clean[name] = _validate(name, value)
        if not clean:
            return self.get(guild_id)
        await self._rows.update(guild_id, clean)
        await self._written(guild_id)
        log.info("voice settings changed", extra={"guild_id": guild_id, "changed": sorted(clean)})
        return self.get(guild_id)

    def channels(self, guild_id: int, kind: str) -> frozenset[int]:
        """The guild's voice channels of ``kind`` (:data:`AUTO_JOIN` or :data:`ALLOWED`)."""
        return self._channels.get((guild_id, kind), frozenset())

    async def set_channel(self, guild_id: int, kind: str, channel_id: int, on: bool) -> frozenset[int]:
        """Add or remove a channel from a list; returns the list. At most :data:`MAX_LISTED_CHANNELS`."""
        if kind not in (AUTO_JOIN, ALLOWED):
            raise GuildSettingsError(f"Unknown channel list {kind!r}.")
        if on and channel_id not in self.channels(guild_id, kind) and \
                len(self.channels(guild_id, kind)) >= MAX_LISTED_CHANNELS:
            raise GuildSettingsError(f"That list is full ({MAX_LISTED_CHANNELS} channels); remove one first.",
                                     key="voice.list_full", limit=MAX_LISTED_CHANNELS)
        await self._rows.set_channel(guild_id, kind, channel_id, on)
        await self._written(guild_id)
        log.info("voice channel list changed", extra={"guild_id": guild_id, "list": kind})
        return self.channels(guild_id, kind)

    def may_join(self, guild_id: int, channel_id: int) -> bool:
        """The joining policy: with an allow-list, only its channels (and auto-join ones); else any."""
        allowed = self.channels(guild_id, ALLOWED)
        return not allowed or channel_id in allowed or channel_id in self.channels(guild_id, AUTO_JOIN)

    async def reset(self, guild_id: int) -> None:
        """Forget everything a guild chose (e.g. when the bot is removed from it)."""
        await self._rows.reset(guild_id)
        await self._written(guild_id)


class OptOutList:
    """People who said no to being heard: their audio is dropped before it is decrypted.

    Stored as keyed subjects (see :mod:`bot.privacy`), never raw ids, so an opt-out outlives
    ``/forget``. :meth:`is_opted_out` is safe to call from any thread and costs one dict lookup
    once a person's subject is known. Open with :meth:`open`.
    """

    def __init__(self, store: OptOuts, snapshot: frozenset[str]) -> None:
        self._store = store
        self._snapshot = snapshot
        self._subjects: dict[int, str] = {}  # id -> subject, in memory only (the HMAC is per packet otherwise)

    @classmethod
    async def open(cls, db: Database) -> OptOutList:
        from bot.privacy import open_opt_outs

        await GuildRows(db).migrate()  # the legacy voice_opt_outs table
        store = await open_opt_outs(db)  # also moves raw rows an earlier version wrote into keyed subjects
        return cls(store, await store.subjects("voice"))

    def _subject(self, user_id: int) -> str:
        subject = self._subjects.get(user_id)
        if subject is None:
            subject = self._subjects[user_id] = self._store.subject(f"discord:{user_id}")
        return subject

    @property
    def user_ids(self) -> frozenset[int]:
        """The opted-out people among those seen by this process (the stored subjects cannot be reversed)."""
        return frozenset(uid for uid, subject in list(self._subjects.items()) if subject in self._snapshot)

    def is_opted_out(self, user_id: int) -> bool:
        return self._subject(user_id) in self._snapshot

    def accepts(self, user_id: int) -> bool:
        """The receive filter: True when this person's audio may be processed."""
        return self._subject(user_id) not in self._snapshot

    def block(self, user_id: int) -> None:
        """Drop this person's audio from now on in this process (before the opt-out is stored)."""
        # Replacing the reference is atomic under the GIL: the socket thread sees old or new, never half.
        self._snapshot = self._snapshot | {self._subject(user_id)}

    async def opt_out(self, user_id: int) -> bool:
        """Record the opt-out; returns False if the person had already opted out."""
        self.block(user_id)  # first: from this moment their audio is dropped, whatever the database does
        return await self._store.add(f"discord:{user_id}", "voice", "optout")

    async def opt_in(self, user_id: int) -> bool:
        """Remove the opt-out; returns False if the person had not opted out."""
        changed = await self._store.remove(f"discord:{user_id}")
        self._snapshot = self._snapshot - {self._subject(user_id)}
        return changed
