"""Per-guild voice settings and joining lists: the rows (the cached, validated view is bot/voice/guilds.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from bot.store.database import Database, Row
from bot.store.erase import Erasure, register

__all__ = ["GuildRows", "CHANNEL"]

COMPONENT = "guilds"
CHANNEL = "voicebot_guilds"  # NOTIFY channel: payload is the guild id whose rows changed

MIGRATIONS: list[Any] = [
    {"sqlite": """
    CREATE TABLE voice_guild_settings (
        guild_id INTEGER PRIMARY KEY,
        mode TEXT,
        voice_id TEXT,
        mirror_transcripts INTEGER NOT NULL DEFAULT 0,
        idle_leave_seconds INTEGER,
        record_audio INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE voice_opt_outs (
        user_id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL
    )
    """, "postgresql": """
    CREATE TABLE voice_guild_settings (
        guild_id BIGINT PRIMARY KEY,
        mode TEXT,
        voice_id TEXT,
        mirror_transcripts INTEGER NOT NULL DEFAULT 0,
        idle_leave_seconds INTEGER,
        record_audio INTEGER NOT NULL DEFAULT 0,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE voice_opt_outs (
        user_id BIGINT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL
    )
    """},
    # Other bots' audio (music bots...) is ignored unless the guild chooses to include it.
    "ALTER TABLE voice_guild_settings ADD COLUMN include_bots INTEGER NOT NULL DEFAULT 0",
    # Joining policy: voice channels the bot joins by itself when someone arrives (auto_join), and
    # the only ones it may be brought into (allowed; none listed means any).
    {"sqlite": """
    CREATE TABLE voice_guild_channels (
        guild_id INTEGER NOT NULL,
        channel_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('auto_join', 'allowed')),
        PRIMARY KEY (guild_id, channel_id, kind)
    )
    """, "postgresql": """
    CREATE TABLE voice_guild_channels (
        guild_id BIGINT NOT NULL,
        channel_id BIGINT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('auto_join', 'allowed')),
        PRIMARY KEY (guild_id, channel_id, kind)
    )
    """},
]

SETTING_COLUMNS = ("mode", "voice_id", "mirror_transcripts", "idle_leave_seconds", "record_audio", "include_bots")


class GuildRows(Erasure):
    """The SQL of guild settings; names no one (guild and channel ids are not people)."""

    component = COMPONENT
    keeps = {
        "voice_guild_settings": "per-server choices keyed by guild id",
        "voice_guild_channels": "per-server joining policy: voice channel ids to join by itself or allow",
    }

    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> None:
        await self.db.migrate(COMPONENT, MIGRATIONS)
        register(self.db, self)

    async def settings(self, guild_id: int | None = None) -> list[Row]:
        if guild_id is None:
            return await self.db.query("SELECT * FROM voice_guild_settings")
        return await self.db.query("SELECT * FROM voice_guild_settings WHERE guild_id = ?", (int(guild_id),))

    async def channels(self, guild_id: int | None = None) -> list[tuple[int, int, str]]:
        if guild_id is None:
            rows = await self.db.query("SELECT guild_id, channel_id, kind FROM voice_guild_channels")
        else:
            rows = await self.db.query("SELECT guild_id, channel_id, kind FROM voice_guild_channels WHERE guild_id = ?",
                                       (int(guild_id),))
        return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]

    async def update(self, guild_id: int, clean: Mapping[str, Any]) -> None:
        """Store validated values (column names from :data:`SETTING_COLUMNS` only)."""
        for name in clean:
            if name not in SETTING_COLUMNS:
                raise ValueError(f"unknown guild setting column {name!r}")
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute("INSERT INTO voice_guild_settings (guild_id, updated_at) VALUES (?, ?) "
                             "ON CONFLICT (guild_id) DO NOTHING", (int(guild_id), now))
            assignments = ", ".join(f"{name} = ?" for name in clean)
            values = [int(v) if isinstance(v, bool) else v for v in clean.values()]
            await tx.execute(f"UPDATE voice_guild_settings SET {assignments}, updated_at = ? WHERE guild_id = ?",
                             (*values, now, int(guild_id)))

    async def set_channel(self, guild_id: int, kind: str, channel_id: int, on: bool) -> None:
        if on:
            await self.db.execute("INSERT INTO voice_guild_channels (guild_id, channel_id, kind) VALUES (?, ?, ?) "
                                  "ON CONFLICT (guild_id, channel_id, kind) DO NOTHING",
                                  (int(guild_id), int(channel_id), kind))
        else:
            await self.db.execute("DELETE FROM voice_guild_channels WHERE guild_id = ? AND channel_id = ? AND kind = ?",
                                  (int(guild_id), int(channel_id), kind))

    async def reset(self, guild_id: int) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM voice_guild_settings WHERE guild_id = ?", (int(guild_id),))
            await tx.execute("DELETE FROM voice_guild_channels WHERE guild_id = ?", (int(guild_id),))


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register(COMPONENT, MIGRATIONS)
