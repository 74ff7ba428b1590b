"""Phone calls through Twilio Media Streams: the same agent, memory and voice pipeline on a phone number.

- :mod:`bot.phone.audio` — μ-law 8 kHz to and from PCM, and TTS audio to μ-law, in process (numpy, soxr).
- :mod:`bot.phone.protocol` — the Media Streams messages, parsed into dataclasses and built.
- :mod:`bot.phone.tokens` — the single-use, short-lived token that admits one call's media socket.
- :mod:`bot.phone.call` — one call: the socket feeding a :class:`~bot.voice.session.VoiceSession`.
- :mod:`bot.phone.service` — the signed webhooks, the media WebSocket route, hanging up via REST.
- :mod:`bot.phone.caller` — a loopback caller playing Twilio's side (tests, ``voicebot simulate --call``).
"""

from __future__ import annotations
