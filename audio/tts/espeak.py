"""espeak-ng through ``espeakng-loader`` (ctypes): a local voice that needs no download.

The library is one process-global engine with a single synthesis callback, so every call goes
through ``_Engine`` under a lock, in a worker thread (synthesis is CPU work). Synchronous mode
(``AUDIO_OUTPUT_SYNCHRONOUS``) makes ``espeak_Synth`` call our callback with int16 mono samples at
22.05 kHz and return only when the text is done, which is what lets the callback stream chunks
out as they are produced. The engine resamples that to 48 kHz in-process (soxr, streaming), so
playback takes it as it is, without one FFmpeg process per sentence.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import AsyncIterator, Callable

from audio.languages import LANGUAGES
from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceInfo, VoiceSpec, stream_from_thread

__all__ = ["EspeakEngine", "synthesize_pcm", "list_espeak_voices", "ESPEAK_SAMPLE_RATE", "OUTPUT_SAMPLE_RATE"]

log = logging.getLogger(__name__)

ESPEAK_SAMPLE_RATE = 22050
OUTPUT_SAMPLE_RATE = 48000  # what EspeakEngine streams: Discord's rate, so playback needs no FFmpeg
DEFAULT_VOICE = "en-us"

# espeak_AUDIO_OUTPUT: 2 = AUDIO_OUTPUT_SYNCHRONOUS (callback, no sound device, returns when done).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeakINITIALIZE_DONT_EXIT: without it a missing data directory makes the library call exit().
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
# espeak_PARAMETER: espeakRATE (words per minute, 80..450; the default is 175).
_PARAM_RATE = 1
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    # espeak_VOICE from speak_lib.h
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # sequence of (priority byte, NUL-terminated name), ends with a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _languages(ptr: int | None) -> list[str]:
    if not ptr:
        return []
    out: list[str] = []
    offset = 0
    while True:
        priority = ctypes.c_ubyte.from_address(ptr + offset).value
        if priority == 0:
            return out
        name = ctypes.string_at(ptr + offset + 1)
        out.append(name.decode("utf-8", "replace"))
        offset += 1 + len(name) + 1


class _Engine:
    """The single process-wide espeak-ng instance; all access is serialised by ``lock``."""

    _instance: _Engine | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - a hard dependency
            raise TTSError(
                "espeakng-loader is not installed",
                user_message="The local voice is not installed.",
                kind="not_installed",
            ) from exc
        self.lock = threading.Lock()
        self._sink: Callable[[bytes], bool] | None = None
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        data_path = espeakng_loader.get_data_path()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise TTSError(
                f"espeak_Initialize failed ({rate}) with data path {data_path}",
                user_message="The local voice could not start.",
                kind="engine_failed",
            )
        self.sample_rate = rate
        # Keep a reference: ctypes callbacks are freed with their Python object.
        self._callback = _SYNTH_CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self._voice: str | None = None
        self._identifiers: dict[str, str] | None = None

    @classmethod
    def get(cls) -> _Engine:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short] | None, n: int, _events: int | None) -> int:
        # Runs inside espeak_Synth on the calling thread. Return 1 to abort synthesis.
        if wav and n > 0 and self._sink is not None:
            try:
                keep_going = self._sink(ctypes.string_at(wav, n * 2))
            except Exception:  # an exception must not unwind through C frames
                log.exception("espeak sink failed")
                return 1
            return 0 if keep_going else 1
        return 0

    def _list(self) -> list[tuple[VoiceInfo, str]]:
        # Caller holds the lock. Returns (voice, espeak identifier such as "gmw/en-US").
        array = self.lib.espeak_ListVoices(None)
        out: list[tuple[VoiceInfo, str]] = []
        i = 0
        while array[i]:
            v = array[i].contents
            ident = (v.identifier or b"").decode("utf-8", "replace")
            name = (v.name or b"").decode("utf-8", "replace")
            langs = _languages(v.languages)
            out.append((VoiceInfo(id=langs[0] if langs else ident, name=name, description=", ".join(langs)), ident))
            i += 1
        return out

    def voices(self) -> list[VoiceInfo]:
        with self.lock:
            return [info for info, _ident in self._list()]

    def _resolve(self, voice: str) -> str:
        # espeak_SetVoiceByName matches a voice's name or file name, not its language code
        # ("en-gb" lives in the file "gmw/en"), so map every spelling people use to the identifier.
        if self._identifiers is None:
            table: dict[str, str] = {}
            for info, ident in self._list():
                for key in (ident, ident.rsplit("/", 1)[-1], info.name, info.id):
                    table.setdefault(key.lower(), ident)
            self._identifiers = table
        ident = self._identifiers.get(voice.lower())
        if ident is None:
            raise TTSError(
                f"espeak-ng has no voice {voice!r}",
                user_message="That local voice does not exist.",
                kind="voice_not_found",
            )
        return ident

    def synth(self, text: str, voice: str, sink: Callable[[bytes], bool], rate_wpm: int | None = None) -> None:
        """Synthesize ``text`` into ``sink`` (called with each chunk; return False to stop)."""
        data = text.encode("utf-8")
        with self.lock:
            ident = self._resolve(voice)
            if ident != self._voice:
                if self.lib.espeak_SetVoiceByName(ident.encode("utf-8")) != _EE_OK:
                    raise TTSError(
                        f"espeak-ng could not load voice {voice!r}",
                        user_message="That local voice does not exist.",
                        kind="voice_not_found",
                    )
                self._voice = ident
            if rate_wpm is not None:
                self.lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
            self._sink = sink
            try:
                buf = ctypes.create_string_buffer(data)
                status = self.lib.espeak_Synth(buf, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                self.lib.espeak_Synchronize()
            finally:
                self._sink = None
            # EE_OK = 0; EE_INTERNAL_ERROR = -1; an aborted synthesis still returns EE_OK.
            if status not in (_EE_OK,):
                raise TTSError(f"espeak_Synth failed ({status})", kind="engine_failed")


def synthesize_pcm(text: str, voice: str = DEFAULT_VOICE) -> tuple[bytes, int]:
    """Synthesize ``text`` synchronously: (s16le mono PCM, sample rate). For tests and tools.

    Blocks the calling thread (a few ms per sentence); never call it on the event loop.
    """
    engine = _Engine.get()
    parts: list[bytes] = []

    def sink(chunk: bytes) -> bool:
        parts.append(chunk)
        return True

    if text.strip():
        engine.synth(text, voice, sink)
    return b"".join(parts), engine.sample_rate


def list_espeak_voices() -> list[VoiceInfo]:
    """Every espeak-ng voice (id = its primary language code, usable as ``VoiceSpec.voice_id``)."""
    return _Engine.get().voices()


class EspeakEngine(TTSEngine):
    """espeak-ng as a ``TTSEngine``: s16le mono at 48 kHz (resampled from espeak's 22.05 kHz with
    soxr as it is synthesised), streamed.

    ``VoiceSpec.voice_id`` names an espeak voice (``"en-us"``, ``"en-gb"``, ``"de"``…); other
    VoiceSpec fields are ignored.
    """

    name = "espeak"
    format = AudioFormat("s16le", OUTPUT_SAMPLE_RATE, 1)

    def __init__(self, *, default_voice: str = DEFAULT_VOICE, rate_wpm: int | None = None) -> None:
        self._default_voice = default_voice
        self._rate_wpm = rate_wpm

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        """Stream PCM chunks for ``text`` (async generator; close it to stop synthesis early)."""
        if not text.strip():
            return
        voice_name = (voice.voice_id if voice and voice.voice_id else None) or self._default_voice
        if voice is not None and voice.language and not voice.voice_id:
            known = LANGUAGES.get(voice.language)
            voice_name = known.espeak if known else voice.language  # espeak also resolves plain codes

        def produce(emit: Callable[[bytes], bool]) -> None:
            import numpy as np
            import soxr

            resampler = soxr.ResampleStream(ESPEAK_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, 1, dtype="int16")

            def resampled(chunk: bytes) -> bool:
                pcm = resampler.resample_chunk(np.frombuffer(chunk, dtype=np.int16))
                return emit(pcm.tobytes()) if pcm.size else True

            _Engine.get().synth(text, voice_name, resampled, self._rate_wpm)
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if tail.size:
                emit(tail.tobytes())

        async for chunk in stream_from_thread(produce, what="espeak-ng"):
            yield chunk

    async def list_voices(self) -> list[VoiceInfo]:
        """espeak-ng's voices (loaded in a worker thread)."""
        return await asyncio.get_running_loop().run_in_executor(None, list_espeak_voices)

    async def check(self) -> str:
        """Synthesize a word; return e.g. ``"espeak-ng, 22050 Hz"``."""
        pcm, rate = await asyncio.get_running_loop().run_in_executor(None, synthesize_pcm, "check", self._default_voice)
        if not pcm:
            raise TTSError("espeak-ng produced no audio", user_message="The local voice is not working.", kind="engine_failed")
        return f"espeak-ng, {rate} Hz"

    async def aclose(self) -> None:
        """Nothing to release: the library stays loaded for the process."""
        return None
