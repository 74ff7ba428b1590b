"""Languages (issue 15): which language each place speaks, and the bot's own words in it.

- ``places``: a language per place (``guild:ID``, a person's identity), ``auto`` per message.
- ``detect``: offline text language detection (py3langid's model ships in its wheel).
- ``catalog`` / ``messages``: ``t(key, language, **values)`` with en, de, fr, es, pt, ja.
- ``commands``: slash command names and descriptions through discord.py's Translator.
- ``words``: which language the bot's own words are in (a channel post, a command's answer, a DM).
- ``engine_texts``: the speech engines' English failure texts, said in a place's language.
- ``voices``: the voice for a reply's language (espeak-ng voice, ElevenLabs language_code).
- ``bidi``: right-to-left text inside the bot's left-to-right lines.

The language registry itself is ``audio.languages`` (the speech engines need it too).
"""
