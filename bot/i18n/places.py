"""A language per place (a guild, a phone number, a console chat), and choosing one per message.

A place's setting is a fixed language or ``auto``. Unset, a guild takes ``LANGUAGE`` when that
is ``auto`` or a language other than English, else the guild's Discord ``preferred_locale`` (when
it is a language we know), else English. In ``auto`` each utterance or message is answered in its own language: the
recognizer's answer when it has one (Deepgram ``multi``, Whisper), else the text detector's.
A detection under ``MIN_CONFIDENCE`` keeps the place's fallback language (the last language the
place was sure of, else its default); a language we do not know gets one clear notice per place
and the fallback.

Rows for a person (``phone:+1555…``) are personal data: ``bot.privacy.forget_person`` deletes
them with the rest of what names that person.

Every place's row is held in memory (loaded when the store opens: a row is a few dozen bytes), so
choosing a language never waits on the database; writes go to the database (bot/store/languages.py)
and, on PostgreSQL, NOTIFY the other processes, whose caches reload that place within a second.
"""

from __future__ import annotations

import logging
import asyncio
import threading
from dataclasses import dataclass

from bot.store import Database
from bot.store.languages import CHANNEL, LanguageRows
from bot.store.notify import listener, notify
from bot.i18n.catalog import t
from bot.i18n.detect import UNSUPPORTED_CONFIDENCE, detect
from bot.i18n.languages import AUTO, language_name, normalize_code

__all__ = ["Choice", "LanguageChooser", "LanguageStore", "PlaceLanguages", "default_mode", "fallback_language"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Choice:
    """The language to answer one message in, and why."""

    language: str
    source: str  # "fixed", "recognizer", "detected", "fallback"
    notice: str | None = None  # say this once first (an unsupported language)


def default_mode(setting: str | None, configured: str, preferred_locale: str | None = None) -> str:
    """The mode of a place: its own setting; else ``LANGUAGE`` when that is ``auto`` or a language
    other than English (the operator chose it); else the place's Discord language; else English.

    Discord gives every server a language (``en-US`` unless a Community server chose another), so
    the default ``LANGUAGE=en`` means "each server's own language".
    """
    if setting:
        return setting
    if configured != "en":
        return configured
    return normalize_code(preferred_locale) or configured


def fallback_language(configured: str, preferred_locale: str | None = None, learned: str | None = None) -> str:
    """The language used when an ``auto`` place cannot tell (and for the bot's own words there)."""
    chosen = configured if configured not in (AUTO, "en") else None
    return learned or chosen or normalize_code(preferred_locale) or "en"


class LanguageStore:
    """Per-place language settings (``guild:ID``, ``phone:+1555…``): read from memory, written through.

    Open with :meth:`open`. :meth:`get` never touches the database.
    """

    COMPONENT = "languages"

    def __init__(self, db: Database) -> None:
        self._db = db
        self._rows = LanguageRows(db)
        self._cache: dict[str, tuple[str | None, str | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, db: Database) -> LanguageStore:
        store = cls(db)
        await store._rows.migrate()
        store._rows.forgotten_places = store._forgotten
        await store.reload()
        await listener(db).listen(CHANNEL, store.reload_place, store.reload)
        return store

    async def reload(self) -> None:
        self._cache = await self._rows.all()

    async def reload_place(self, place: str) -> None:
        found = await self._rows.get(place)
        if found is None:
            self._cache.pop(place, None)
        else:
            self._cache[place] = found

    async def _forgotten(self, places: set[str]) -> None:
        for place in places:
            self._cache.pop(place, None)
            await notify(self._db, CHANNEL, place)

    def get(self, place: str) -> tuple[str | None, str | None]:
        """(setting, learned): the place's own choice and the last language it was sure of."""
        return self._cache.get(place, (None, None))

    async def set(self, place: str, setting: str | None) -> None:
        """Store ``auto``, a language code, or None (back to the default)."""
        await self._rows.set(place, setting)
        self._cache[place] = (setting, self.get(place)[1])
        await notify(self._db, CHANNEL, place)
        log.info("language setting changed", extra={"place": place.split(":", 1)[0], "language": setting or "default"})

    def learn(self, place: str, language: str) -> None:
        """Remember the language a place was last sure of (stored in the background: never waits)."""
        self._cache[place] = (self.get(place)[0], language)
        task = asyncio.create_task(self._store_learned(place, language), name="language-learn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store_learned(self, place: str, language: str) -> None:
        try:
            await self._rows.learn(place, language)
            await notify(self._db, CHANNEL, place)
        except Exception as exc:  # a hint, not a promise: the next sure message learns it again
            log.warning("Could not store a place's language (%s)", exc)

    async def forget(self, place: str) -> None:
        await self._rows.delete(place)
        self._cache.pop(place, None)
        await notify(self._db, CHANNEL, place)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class LanguageChooser:
    """Chooses the answer language per message; remembers which notices each place already got."""

    def __init__(self) -> None:
        self._noticed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def choose(self, *, mode: str, fallback: str, text: str, heard: str | None = None, place: str = "") -> Choice:
        """The language to answer ``text`` in.

        ``mode``: ``auto`` or a language code; ``fallback``: the place's language when unsure;
        ``heard``: the recognizer's language for this utterance, if it gave one.
        """
        if mode != AUTO:
            return Choice(mode, "fixed")
        if heard:
            code = normalize_code(heard)
            if code is not None:
                return Choice(code, "recognizer")
            return self._unsupported(heard, fallback, place)
        found = detect(text)
        if found is None or not found.sure:
            return Choice(fallback, "fallback")
        code = normalize_code(found.language)
        if code is None:
            if found.confidence < UNSUPPORTED_CONFIDENCE:
                return Choice(fallback, "fallback")  # a short line that merely looks foreign
            return self._unsupported(found.language, fallback, place)
        return Choice(code, "detected")

    def _unsupported(self, raw: str, fallback: str, place: str) -> Choice:
        key = (place, raw.lower())
        with self._lock:
            first = key not in self._noticed
            self._noticed.add(key)
        log.info("unsupported language %s; answering in %s", raw, fallback)
        notice = t("language.unsupported", fallback, code=raw, language=language_name(fallback)) if first else None
        return Choice(fallback, "fallback", notice)


class PlaceLanguages:
    """What the bot's surfaces ask: a place's mode and fallback, and each message's language.

    One per process (``Services.languages``); places are ``guild:ID`` and identities
    (``phone:+1555…``, ``console``).
    """

    def __init__(self, store: LanguageStore, configured: str) -> None:
        self.store = store
        self.chooser = LanguageChooser()
        self.configured = configured  # LANGUAGE

    @classmethod
    async def open(cls, db: Database, configured: str) -> PlaceLanguages:
        return cls(await LanguageStore.open(db), configured)

    async def aclose(self) -> None:
        await self.store.aclose()

    def mode(self, place: str, preferred_locale: str | None = None) -> str:
        setting, _learned = self.store.get(place)
        return default_mode(setting, self.configured, preferred_locale)

    def fallback(self, place: str, preferred_locale: str | None = None) -> str:
        setting, learned = self.store.get(place)
        if setting and setting != AUTO:
            return setting
        return fallback_language(self.configured, preferred_locale, learned)

    def choose(self, place: str, text: str, *, heard: str | None = None, preferred_locale: str | None = None,
               learn: bool = False) -> Choice:
        """The language to answer ``text`` in at ``place``.

        ``learn`` (phone numbers): the place is ``auto`` unless it set a language, and a sure
        detection is remembered as its language for the messages that say too little to tell.
        """
        setting, learned = self.store.get(place)
        mode = default_mode(setting, AUTO if learn else self.configured, preferred_locale)
        fallback = mode if mode != AUTO else fallback_language(self.configured, preferred_locale, learned)
        if fallback == AUTO:
            fallback = "en"
        choice = self.chooser.choose(mode=mode, fallback=fallback, text=text, heard=heard, place=place)
        if learn and choice.source in ("detected", "recognizer") and choice.language != learned:
            self.store.learn(place, choice.language)
        return choice

    async def set(self, place: str, setting: str | None) -> None:
        await self.store.set(place, setting)
