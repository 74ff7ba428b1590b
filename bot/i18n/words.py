"""Which language the bot's own words are in, for a command's answer and for a post in a channel.

The rule (also in the README's language section):

- **A post in a server's channel** (the join notice, "nobody's here, so I left", the deaf
  watchdog's notices, the notes after a note-taking call, the channel status): the server's
  language, i.e. its ``/language`` setting, else ``LANGUAGE`` when that is not English, else the
  server's Discord ``preferred_locale``; a server in ``auto`` uses its fallback (the last language
  it was sure of, else the same chain). Nobody in particular asked, so the place decides.
- **A command's answer in a server** (ephemeral: only the caller sees it): the server's language
  when the server has one of its own: a fixed ``/language``, a ``LANGUAGE`` other than English,
  or a Discord ``preferred_locale`` other than ``en-US``. Discord gives every server ``en-US``
  until a Community server picks its language, so ``en-US`` says nothing about the people there;
  such a server, and a server in ``auto``, answers each caller in their Discord client's language
  (``interaction.locale``). When that language has no catalog, the server's fallback, else English.
- **A command's answer in a DM** (``/link``, ``/unlink``): the person's own language, i.e. what
  they set or what the bot last learned from their DMs (``discord:ID``), else their client's
  language, else ``LANGUAGE``, else English.

Languages the catalog does not have (Korean, Arabic...) fall through to the next step: the bot's
words come in a language it has, never a half-translated mix.
"""

from __future__ import annotations

import discord

from bot.i18n.catalog import catalog_language
from bot.i18n.languages import AUTO, CATALOG_LANGUAGES, normalize_code
from bot.i18n.places import PlaceLanguages

__all__ = ["DISCORD_DEFAULT_LOCALE", "guild_words_language", "interaction_language", "person_words_language"]

DISCORD_DEFAULT_LOCALE = "en-US"  # what Discord reports for a server that never chose a language


def _catalog(code: str | None) -> str | None:
    """``code`` when the bot has its words in it, else None (so the next rule applies)."""
    found = normalize_code(code) if code else None
    return found if found in CATALOG_LANGUAGES else None


def guild_words_language(languages: PlaceLanguages | None, guild_id: int, preferred_locale: str | None) -> str:
    """The language of the bot's posts in a server's channels (see the module's rule)."""
    if languages is None:
        return catalog_language(preferred_locale)
    return catalog_language(languages.fallback(f"guild:{guild_id}", preferred_locale))


def _guild_own_language(languages: PlaceLanguages, guild_id: int, preferred_locale: str | None) -> str | None:
    """The server's own catalog language for an answer, or None when it has none (``auto``, ``en-US``)."""
    setting, _learned = languages.store.get(f"guild:{guild_id}")
    if setting == AUTO:
        return None
    if setting:
        return _catalog(setting)
    if languages.configured == AUTO:
        return None
    if languages.configured != "en":
        return _catalog(languages.configured)
    if preferred_locale and preferred_locale != DISCORD_DEFAULT_LOCALE:
        return _catalog(preferred_locale)
    return None


def person_words_language(languages: PlaceLanguages | None, user_id: int, client_locale: str | None) -> str:
    """The language of an answer to one person outside a server (a DM)."""
    if languages is not None:
        setting, learned = languages.store.get(f"discord:{user_id}")
        own = _catalog(setting if setting and setting != AUTO else learned)
        if own:
            return own
    client = _catalog(client_locale)
    if client:
        return client
    configured = languages.configured if languages is not None else "en"
    return _catalog(configured) or "en"


def interaction_language(interaction: discord.Interaction, languages: PlaceLanguages | None) -> str:
    """The language to answer a slash command or a button press in (see the module's rule)."""
    client = str(interaction.locale) if interaction.locale else None
    if interaction.guild_id is None:
        return person_words_language(languages, interaction.user.id, client)
    guild_locale = str(interaction.guild_locale) if interaction.guild_locale else None
    if languages is None:
        return _catalog(guild_locale if guild_locale != DISCORD_DEFAULT_LOCALE else None) or _catalog(client) or "en"
    own = _guild_own_language(languages, interaction.guild_id, guild_locale)
    if own:
        return own
    return _catalog(client) or guild_words_language(languages, interaction.guild_id, guild_locale)
