"""Twilio Media Streams messages (bidirectional ``<Connect><Stream>``), parsed into our dataclasses.

Twilio is the WebSocket client and sends JSON *text* frames (Twilio's "Media Streams - WebSocket
Messages" page):

- ``connected`` ``{"event","protocol":"Call","version"}``, first;
- ``start`` ``{"event","sequenceNumber","streamSid","start":{"accountSid","callSid","streamSid","tracks",
  "customParameters":{…},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}``;
- ``media`` ``{"event","streamSid","media":{"track","chunk","timestamp","payload":"<base64 μ-law>"}}``,
  20 ms (160 bytes) each, in real time;
- ``dtmf`` ``{"dtmf":{"track","digit"}}``; ``mark`` ``{"mark":{"name"}}`` — echoed once the audio sent
  before our mark has played, or at once for marks still queued when we send ``clear``;
- ``stop`` ``{"stop":{"accountSid","callSid"}}``, last.

We send text frames only (a binary frame is Twilio error 31950; a bad field or ``streamSid`` is 31951):
``media`` (base64 raw μ-law 8 kHz, no header), ``mark`` and ``clear``.

Every parser here is pure and raises :class:`ProtocolError` with a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Connected",
    "Dtmf",
    "Event",
    "Mark",
    "Media",
    "ProtocolError",
    "Start",
    "Stop",
    "clear_message",
    "mark_message",
    "media_message",
    "parse_message",
]

MAX_PARAMETERS = 32  # <Parameter> children we keep from ``start`` (ours carries a handful)


class ProtocolError(ValueError):
    """A message we cannot use; ``str()`` is one line fit for a log."""


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    encoding: str
    sample_rate: int
    channels: int
    tracks: tuple[str, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    payload: bytes
    track: str = "inbound"
    chunk: int | None = None
    timestamp: int | None = None  # milliseconds since the stream started, by Twilio's clock


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Stop:
    call_sid: str


Event = Connected | Start | Media | Dtmf | Mark | Stop


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{msg.get('event')} message without a {key!r} object")
    return value


def _str(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ProtocolError(f"field {key!r} is missing or not a string")
    return value


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_message(text: str | bytes) -> Event:
    """One WebSocket text frame from Twilio → an :data:`Event`. Raises :class:`ProtocolError`."""
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON ({type(exc).__name__})") from None
    except RecursionError:
        # json's decoder recurses per nesting level: "[" * 4000 fits in a frame and exhausts the
        # stack. Twilio's messages nest three levels deep.
        raise ProtocolError("JSON nested too deeply") from None
    if not isinstance(msg, dict):
        raise ProtocolError("not a JSON object")
    event = msg.get("event")
    if event == "media":
        media = _obj(msg, "media")
        raw = media.get("payload")
        if not isinstance(raw, str):
            raise ProtocolError("media without a payload string")
        try:
            payload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("media payload is not base64") from None
        return Media(payload, track=str(media.get("track") or "inbound"), chunk=_int(media.get("chunk")),
                     timestamp=_int(media.get("timestamp")))
    if event == "start":
        start = _obj(msg, "start")
        fmt = start.get("mediaFormat") if isinstance(start.get("mediaFormat"), dict) else {}
        params = start.get("customParameters") if isinstance(start.get("customParameters"), dict) else {}
        tracks = start.get("tracks") if isinstance(start.get("tracks"), list) else []
        stream_sid = start.get("streamSid") or msg.get("streamSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            raise ProtocolError("start without a streamSid")
        return Start(
            stream_sid=stream_sid,
            call_sid=_str(start, "callSid"),
            account_sid=_str(start, "accountSid", required=False),
            encoding=str(fmt.get("encoding") or ""),
            sample_rate=_int(fmt.get("sampleRate")) or 0,
            channels=_int(fmt.get("channels")) or 0,
            tracks=tuple(str(t) for t in tracks[:4]),
            parameters={str(k): str(v) for k, v in list(params.items())[:MAX_PARAMETERS]},
        )
    if event == "mark":
        return Mark(_str(_obj(msg, "mark"), "name"))
    if event == "dtmf":
        return Dtmf(_str(_obj(msg, "dtmf"), "digit"))
    if event == "stop":
        stop = msg.get("stop") if isinstance(msg.get("stop"), dict) else {}
        return Stop(str(stop.get("callSid") or ""))
    if event == "connected":
        return Connected(str(msg.get("protocol") or ""), str(msg.get("version") or ""))
    if isinstance(event, str):
        raise ProtocolError(f"unknown event {event[:40]!r}")
    raise ProtocolError("message without an event")


def media_message(stream_sid: str, mulaw: bytes) -> str:
    return json.dumps({"event": "media", "streamSid": stream_sid,
                       "media": {"payload": base64.b64encode(mulaw).decode("ascii")}})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})
