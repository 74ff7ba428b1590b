"""A German and a Japanese utterance, heard by Deepgram in `multi` mode, answered in that language
with the matching espeak-ng voice.

Real parts: espeak-ng makes the speech (tests/speech_samples.py), the real Deepgram SDK engine talks
to the loopback Deepgram (which reports the language it "detected" the way the real service does
with language=multi), the real OpenAI engine talks to the loopback OpenAI server (which answers in
the language its system prompt asks for), and the real espeak-ng engine speaks the reply.
"""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import soxr
from aiohttp import web

from audio.tts.base import AudioFormat, VoiceSpec
from audio.tts.espeak import EspeakEngine
from bot.agent.factory import build_agent
from bot.store import SqliteDatabase as Database
from bot.i18n.places import PlaceLanguages
from bot.memory import Memory
from bot.providers import build_stt, deepgram_language
from bot.settings import load_settings
from bot.voice.session import PlayResult, VoiceSession
from bot.voice.turns import TurnPolicy, VoiceMode
from tests.fakes.deepgram_server import FakeDeepgram, SpeechScript, is_voiced_frame
from tests.fakes.openai_server import FakeOpenAI

RATE = 16000
FRAME_BYTES = 640  # 20 ms at 16 kHz
ANSWERS = {
    "German": ["Hallo", "! ", "Mir geht es gut", ", danke", ". ", "Es ist 14:30 Uhr", "."],
    "Japanese": ["こんにちは", "。", "元気です", "。"],
    "English": ["Hello", "."],
}


class PolyglotOpenAI(FakeOpenAI):
    """Answers in the language the system prompt asks for ("Answer in German (Deutsch)…")."""

    async def _stream(self, request: web.Request, model: str) -> web.StreamResponse:
        body = self.requests[-1].body or {}
        system = next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), "")
        asked = re.search(r"Answer in (\w+)", system)
        self.reply_tokens = list(ANSWERS.get(asked.group(1) if asked else "English", ANSWERS["English"]))
        return await super()._stream(request, model)


class RecordingEspeak(EspeakEngine):
    """The real espeak-ng engine, noting which voice each sentence was spoken with."""

    def __init__(self) -> None:
        super().__init__()
        self.spoken: list[tuple[str, VoiceSpec | None]] = []

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        self.spoken.append((text, voice))
        async for chunk in super().synthesize(text, voice):
            yield chunk


class CountingOut:
    def __init__(self) -> None:
        self.played: list[tuple[str, int]] = []

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        total = 0
        async for chunk in chunks:
            total += len(chunk)
        self.played.append((text, total))
        seconds = total / (fmt.sample_rate * 2)
        return PlayResult(played_seconds=seconds, total_seconds=seconds, interrupted=False, first_frame_at=None)

    def stop(self) -> None:
        return None


def speech_16k(text: str, voice: str) -> bytes:
    pcm, rate = espeak_voice_pcm(text, voice)
    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, rate, RATE)
    return np.asarray(out, dtype="<i2").tobytes()


_CHILD = ("import sys; from audio.tts.espeak import synthesize_pcm; pcm, rate = synthesize_pcm(sys.argv[1], sys.argv[2]); "
          "sys.stdout.buffer.write(rate.to_bytes(4, 'little') + pcm)")


@functools.lru_cache(maxsize=16)
def espeak_voice_pcm(text: str, voice: str) -> tuple[bytes, int]:
    """``text`` in espeak-ng's ``voice``, made in a fresh process as tests/speech_samples.py does
    (espeak carries state from one synthesis to the next; the first one in a process is stable)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", _CHILD, text, voice], capture_output=True, check=True, cwd=root,
                         timeout=60).stdout
    return out[4:], int.from_bytes(out[:4], "little")


def voiced_frames(pcm: bytes) -> int:
    return sum(is_voiced_frame(pcm[i:i + FRAME_BYTES]) for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES))


async def test_german_and_japanese_are_answered_in_their_language_with_their_espeak_voice(tmp_path: Path) -> None:
    script = SpeechScript()
    async with FakeDeepgram(script=script) as dg, PolyglotOpenAI() as llm:
        settings = load_settings({
            "LANGUAGE": "auto", "DEEPGRAM_API_KEY": dg.api_key, "DEEPGRAM_URL": dg.ws_url,
            "AGENT_ENGINE": "openai", "OPENAI_API_KEY": llm.api_key, "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_MODEL": llm.models[0], "DATA_DIR": str(tmp_path),
        }, env_file=None)
        assert deepgram_language(settings) == "multi"
        stt = build_stt(settings)
        assert stt is not None and stt.name == "deepgram"
        db = Database.in_memory()
        memory = (await Memory.open(db))
        agent = await build_agent(settings, memory)
        languages = (await PlaceLanguages.open(db, settings.language))
        tts = RecordingEspeak()
        out = CountingOut()
        session = VoiceSession(
            room="discord:1:2", agent=agent, memory=memory, stt=stt, tts=tts, out=out,  # type: ignore[arg-type]
            policy=TurnPolicy(bot_names=("Nova",), mode=VoiceMode.ALWAYS),
            choose_language=lambda text, heard: languages.choose("guild:1", text, heard=heard),
        )
        try:
            for user, (text, code, voice) in enumerate([
                ("Hallo, wie geht es dir heute?", "de", "de"),
                ("こんにちは、お元気ですか？", "ja", "ja"),
            ], start=1):
                pcm = speech_16k(text, voice)
                script.say([(text, voiced_frames(pcm))], language=code)
                before = session.turns_done
                session.on_speech_start(user)
                for i in range(0, len(pcm), FRAME_BYTES):
                    session.on_audio(user, pcm[i:i + FRAME_BYTES])
                    if i % (FRAME_BYTES * 25) == 0:
                        await asyncio.sleep(0)  # let the socket writer run, as the receive loop does
                session.on_speech_end(user)
                async with session.answered:
                    await asyncio.wait_for(session.answered.wait_for(lambda: session.turns_done > before), 60)
            requests = llm.completion_requests
            assert len(requests) == 2
            systems = [next(m["content"] for m in r.body["messages"] if m["role"] == "system") for r in requests]
            assert "Answer in German (Deutsch)" in systems[0]
            assert "Answer in Japanese (日本語)" in systems[1]
            assert requests[0].body["messages"][-1]["content"].endswith("Hallo, wie geht es dir heute?")
            spoken = [(text, v.voice_id if v else None, v.language if v else None) for text, v in tts.spoken]
            german = [s for s in spoken if s[2] == "de"]
            japanese = [s for s in spoken if s[2] == "ja"]
            assert german and all(s[1] == "de" for s in german)
            assert japanese and all(s[1] == "ja" for s in japanese)
            # Spoken the German way: the time as words, not digits.
            assert any("vierzehn Uhr dreißig" in s[0] for s in german)
            assert "".join(s[0] for s in japanese) == "こんにちは。元気です。"
            assert all(total > 0 for _, total in out.played)
            # Deepgram was asked for its multilingual model.
            assert dg.connections and all(c.param("language") == "multi" for c in dg.connections)
        finally:
            await session.aclose()
            await stt.aclose()
            await agent.aclose()


async def test_a_guilds_own_language_reaches_deepgram_per_stream() -> None:
    from audio.stt.deepgram import DeepgramSTT
    from tests.fakes.deepgram_server import word_audio

    async with FakeDeepgram(vocabulary={1000: "hallo"}) as dg:
        stt = DeepgramSTT(dg.api_key, language="en-US", base_url=dg.http_url)
        try:
            default = stt.open_stream(speaker="1")
            german = stt.open_stream(speaker="2", language="de")
            for stream in (default, german):
                stream.push(word_audio([1000]))
            await dg.wait_for(lambda: len(dg.connections) >= 2, timeout=30)
            assert sorted(c.param("language") or "" for c in dg.connections) == ["de", "en-US"]
        finally:
            await stt.aclose()
    settings = load_settings({"DEEPGRAM_API_KEY": "k" * 20}, env_file=None)
    assert deepgram_language(settings) == "en-US"  # English keeps DEEPGRAM_LANGUAGE
    assert deepgram_language(settings, "de") == "de" and deepgram_language(settings, "auto") == "multi"
    assert deepgram_language(settings.replace(deepgram_language="de-CH"), "de") == "de-CH"  # the operator's accent


async def test_the_multilingual_local_model_hears_german_and_says_so(tmp_path: Path) -> None:
    import pytest

    from audio.stt import multilingual
    from audio.stt.local import LocalWhisperSTT
    from bot.providers import local_stt_available, local_stt_english_only, stt_language_note

    if not (local_stt_available() and multilingual.available()):
        pytest.skip("voicebot[multilingual] is not installed")
    settings = load_settings({"LANGUAGE": "auto", "STT_ENGINE": "local", "DATA_DIR": str(tmp_path)}, env_file=None)
    assert not local_stt_english_only(settings)
    stt = build_stt(settings)
    assert isinstance(stt, LocalWhisperSTT) and stt.language is None
    assert stt.model_path == str(tmp_path / "models" / multilingual.MODEL_NAME)
    assert stt_language_note(settings, stt) == ", multilingual (Whisper base)"
    try:
        text, _confidence, heard = await stt.transcribe_heard(speech_16k("Guten Morgen, wie geht es dir heute?", "de"))
        assert heard == "de", (text, heard)
        english, _confidence, heard = await stt.transcribe_heard(speech_16k("Good morning, how are you today?", "en-us"))
        assert heard == "en", (english, heard)
    finally:
        await stt.aclose()
    # A join cut short is redone; a whole one is reused as it is.
    model = tmp_path / "models" / multilingual.MODEL_NAME / "model.bin"
    size = model.stat().st_size
    with model.open("r+b") as f:
        f.truncate(1000)
    assert multilingual.model_dir(tmp_path / "models") == model.parent and model.stat().st_size == size
    # English keeps the small English model.
    assert build_stt(load_settings({"STT_ENGINE": "local"}, env_file=None)).language == "en"  # type: ignore[union-attr]
