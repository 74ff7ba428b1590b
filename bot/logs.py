"""Logging set-up for the whole process, and the one redaction every output goes through.

Secrets are kept out of output by construction (they are :class:`bot.settings.Secret` objects), and
one process-wide :class:`Redactor` is the second line of defence for what a library, a provider's
error body or a traceback lets through. Everything people see passes it:

- log records, at the handlers (a filter on every handler, so every logger is covered: the OpenAI
  SDK's ``openai``/``httpx2`` loggers, discord.py, aiohttp, asyncio's "exception was never
  retrieved"), including formatted exception text and stack info;
- each command's stdout and stderr (:class:`RedactingStream`, installed by the CLI);
- uncaught exceptions' tracebacks (``sys.excepthook``, ``threading.excepthook``);
- error text shown to people on Discord and SMS (``AgentError`` redacts through :func:`redact`).

Log records, and error texts the console shows (:func:`scrub`), also lose the people in them: a phone
number keeps its first digit and last four (``+1******4567``, as ``mask_number`` writes it), and so
does a Discord id (a 17-20 digit snowflake: ``**************5678``), at every level. Rooms named
in DEBUG lines (``sms:+1…``, a DM's ``discord:dm:<id>``), Twilio's request URLs (at INFO) and the
error bodies services send back would otherwise keep in the log the very numbers and ids that
``/forget`` removed from the database. Command output is not masked: it is the operator's own (an
invite link carries the application's id).

It replaces every 8-character (or longer) piece of a secret, not only whole values, because
providers echo parts of keys ("sk-proj-abcd...wxyz", the first 16 characters of a masked key), and
the ``user:password@`` part of any URL. A secret shorter than 8 characters (a URL password) is
replaced only where it appears whole.

The matcher runs on every log line, so the common case (no secret) stays in C: a regular expression
finds the runs of 8 or more characters drawn from the secrets' alphabet (words, ids, URLs), and each
run's 8-character slices are tested against the set of all windows of all secrets with
``set.isdisjoint`` over ``map`` (no Python-level loop). Only a run that holds a piece is walked
position by position. ``python -m bench.redaction`` measures it: 9-12 us for a 140-character line on
a shared 2-core machine, 1.3-1.8x faster than a trie-shaped regex of the windows or a Python loop
over the slices.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import TextIO
from urllib.parse import unquote

__all__ = [
    "REDACTED",
    "WINDOW",
    "RedactingFilter",
    "RedactingStream",
    "Redactor",
    "install_redactor",
    "redact",
    "redactor",
    "mask_identifiers",
    "scrub",
    "setup_logging",
]

REDACTED = "********"
WINDOW = 8  # a piece of a secret this long or longer is redacted wherever it appears
_SHORT_MIN = 4  # shorter whole values (a 3-letter password) would redact ordinary words

# The userinfo of scheme://user:password@host or scheme://token@host in any text (the host stays
# readable). Anchored on the literal "://" so the engine scans for it at C speed.
_USERINFO = re.compile(r"://([^\s/?#@\"'<>]+)@")


def derived_forms(secret: str) -> set[str]:
    """The forms a secret takes on the wire besides itself: percent-decoded (URL userinfo)."""
    forms = {secret}
    decoded = unquote(secret)
    if decoded != secret:
        forms.add(decoded)
    return forms


class Redactor:
    """Replaces every 8-character piece of the given secrets (and URL userinfo) in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if secret:
                values.update(derived_forms(secret))
        windows: set[str] = set()
        short: set[str] = set()
        for value in values:
            if len(value) >= WINDOW:
                windows.update(value[i:i + WINDOW] for i in range(len(value) - WINDOW + 1))
            elif len(value) >= _SHORT_MIN:
                short.add(value)
        self.secrets = frozenset(values)
        self._windows = frozenset(windows)
        alphabet = sorted({ch for w in windows for ch in w})
        self._runs = re.compile("[" + "".join(re.escape(ch) for ch in alphabet) + f"]{{{WINDOW},}}") if windows else None
        # Replace longer values first so one is never left half-replaced by a shorter one inside it.
        self._short = re.compile("|".join(re.escape(s) for s in sorted(short, key=len, reverse=True))) if short else None
        # Every piece (1..7 characters) that could be the start of a window: a stream holds such a
        # tail back until the next write shows whether it continues into a secret.
        self._prefixes = frozenset(w[:k] for w in windows for k in range(1, WINDOW))

    def __repr__(self) -> str:  # never the values
        return f"Redactor(secrets={len(self.secrets)}, windows={len(self._windows)})"

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Merged ``[start, end)`` ranges of ``text`` that are pieces of secrets or URL userinfo."""
        found: list[tuple[int, int]] = []
        if self._runs is not None:
            windows = self._windows
            for run in self._runs.finditer(text):
                piece = run.group()
                count = len(piece) - WINDOW + 1
                if windows.isdisjoint(map(piece.__getitem__, map(slice, range(count), range(WINDOW, count + WINDOW)))):
                    continue
                start = run.start()
                found.extend((start + i, start + i + WINDOW) for i in range(count) if piece[i:i + WINDOW] in windows)
        if self._short is not None:
            found.extend((m.start(), m.end()) for m in self._short.finditer(text))
        if "://" in text:
            found.extend(m.span(1) for m in _USERINFO.finditer(text))
        if not found:
            return found
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            last_start, last_end = merged[-1]
            if start <= last_end:
                merged[-1] = (last_start, max(last_end, end))
            else:
                merged.append((start, end))
        return merged

    @staticmethod
    def _apply(text: str, spans: list[tuple[int, int]]) -> str:
        parts: list[str] = []
        pos = 0
        for start, end in spans:
            parts.append(text[pos:start])
            parts.append(REDACTED)
            pos = end
        parts.append(text[pos:])
        return "".join(parts)

    def __call__(self, text: str) -> str:
        spans = self.spans(text)
        return self._apply(text, spans) if spans else text

    def split_safe(self, text: str) -> tuple[str, str]:
        """``(redacted text safe to write now, raw tail to hold until more text arrives)``.

        The tail is the shortest end of ``text`` that could still grow into a window of a secret,
        so a key written a few characters at a time (a streamed reply) is caught across writes.
        """
        cut = len(text)
        for k in range(min(WINDOW - 1, len(text)), 0, -1):
            if text[-k:] in self._prefixes:
                cut = len(text) - k
                break
        spans = self.spans(text)
        # A confirmed piece that reaches into the tail is held whole, to be matched again with what follows.
        for start, end in spans:
            if end > cut:
                cut = min(cut, start)
                break
        return self._apply(text[:cut], [s for s in spans if s[1] <= cut]), text[cut:]


# An E.164 number (+ and 8-15 digits), also percent-encoded as in a query string ("To=%2B1555..."),
# and a Discord snowflake. Not inside a longer run of letters or digits (a Twilio SID's hex).
_PHONE = re.compile(r"(?<![\w%])(\+|%2[Bb])(\d)(\d{3,10})(\d{4})(?!\d)")
_SNOWFLAKE = re.compile(r"(?<![\w.])(\d{13,16})(\d{4})(?![\w])")


def mask_identifiers(text: str) -> str:
    """``text`` with phone numbers and Discord ids masked to their last four digits."""
    if "+" in text or "%2" in text:
        text = _PHONE.sub(lambda m: m.group(1) + m.group(2) + "*" * len(m.group(3)) + m.group(4), text)
    return _SNOWFLAKE.sub(lambda m: "*" * len(m.group(1)) + m.group(2), text)


def scrub(text: str) -> str:
    """``text`` fit for a log line or the console: secrets redacted, people's numbers and ids masked."""
    return mask_identifiers(redact(text))


# The one redactor of this process; setup_logging (through the CLI) installs the real one.
_current = Redactor()
_current_lock = threading.Lock()


def install_redactor(secrets: Iterable[str]) -> Redactor:
    """Make a redactor of ``secrets`` the process's one redactor (used by every output)."""
    global _current
    with _current_lock:
        _current = Redactor(secrets)
    return _current


def redactor() -> Redactor:
    return _current


def redact(text: str) -> str:
    """``text`` with every piece of a configured secret and every URL userinfo replaced."""
    return _current(text)


class RedactingFilter(logging.Filter):
    """On a handler: redacts a record's final message, exception text and stack info in place, and
    masks the phone numbers and Discord ids in them.

    Attached to handlers rather than loggers because a logger's filters do not see records that
    propagate up from its children (``httpx2``, ``openai._base_client``...).
    """

    def __init__(self, secrets: Iterable[str] | None = None) -> None:
        super().__init__()
        # None: follow the process's redactor (installed after this filter may have been built).
        self._own = Redactor(secrets) if secrets is not None else None

    @property
    def redactor(self) -> Redactor:
        return self._own if self._own is not None else _current

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self.redactor

        def scrub(text: str) -> str:
            return mask_identifiers(redactor(text))

        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it, as logging would
            return True
        redacted = scrub(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


class RedactingStream(io.TextIOBase):
    """A text stream that redacts everything written through it before it reaches ``stream``.

    A tail that could be the start of a secret is held back until the next write (or
    :meth:`release`), so a secret split across writes is still caught; ``flush`` does not release
    it, since streamed output flushes after every few characters.
    """

    def __init__(self, stream: TextIO, scrub: Redactor | None = None) -> None:
        super().__init__()
        self.stream = stream
        self._own = scrub
        self._held = ""
        self._lock = threading.RLock()

    @property
    def redactor(self) -> Redactor:
        return self._own if self._own is not None else _current

    def write(self, s: str) -> int:
        with self._lock:
            safe, self._held = self.redactor.split_safe(self._held + s)
            if safe:
                self.stream.write(safe)
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def release(self) -> None:
        """Write the held tail (at exit: nothing more is coming)."""
        with self._lock:
            held, self._held = self._held, ""
            if held:
                self.stream.write(self.redactor(held))
                self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    def getvalue(self) -> str:
        """Like ``StringIO.getvalue`` when the wrapped stream is one (tests read output this way)."""
        self.release()
        return self.stream.getvalue()  # type: ignore[attr-defined,no-any-return]


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))
    sys.stderr.flush()


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(redact(f"Exception in thread {name}:\n{text}"))
    sys.stderr.flush()


def install_excepthooks() -> None:
    """Tracebacks of uncaught exceptions (main thread and others) go through the redactor."""
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


# Loggers that log every request line at INFO (the OpenAI SDK's HTTP client is httpx2, a fork of
# httpx with its own logger names) or every frame at DEBUG; kept at WARNING unless LOG_LEVEL=DEBUG.
CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "websockets", "hpack")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (the CLI's redacting stream while a command
    runs), never to a stream that has since been replaced and closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class OneLineConnectionErrors(logging.Filter):
    """On a library's logger (asyncpg's pool): a connection that failed is one line with its reason,
    not a traceback per retry while a database is away."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (OSError, ConnectionError)) or type(exc).__module__.startswith("asyncpg"):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(level: str = "INFO", *, secrets: Iterable[str] | None = None, stream: object = None) -> None:
    """Configure the root logger once: one stream handler, a plain format, secret redaction.

    ``secrets`` given: they become the process's redactor. Every handler already attached to any
    logger gets the redacting filter too.
    """
    if secrets is not None:
        install_redactor(secrets)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        for other in getattr(logger, "handlers", ()):
            if not any(isinstance(f, RedactingFilter) for f in other.filters):
                other.addFilter(RedactingFilter())
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, OneLineConnectionErrors) for f in pool_log.filters):
        pool_log.addFilter(OneLineConnectionErrors())
    numeric = logging.getLevelName(level)
    # discord.py logs every gateway event at DEBUG; keep it at INFO unless asked.
    logging.getLogger("discord").setLevel(max(numeric, logging.INFO))
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
