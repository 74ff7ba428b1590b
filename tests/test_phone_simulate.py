"""``voicebot simulate --call``: a loopback phone call from the command line, as a person runs it."""

from __future__ import annotations

import io
import os
import json
import re
import wave
from pathlib import Path

import pytest

from bot.cli import main
from bot.providers import local_stt_available

needs_whisper = pytest.mark.skipif(not local_stt_available(), reason="faster-whisper is not installed")
QUESTION = "Please tell me a joke about the weather."


def run_cli(argv: list[str], tmp_path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--env-file", os.devnull, "simulate", *argv], out=out)
    return code, out.getvalue()


@pytest.fixture
def question_wav(tmp_path: Path) -> Path:
    from tests.speech_samples import espeak_wav

    return espeak_wav(QUESTION, tmp_path / "question.wav")


@needs_whisper
def test_simulate_call_json(question_wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real Twilio settings are ignored: the run makes up its own (these would fail if it used them).
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "9" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "real-token-never-used")
    monkeypatch.setenv("TWILIO_PHONE_NUMBER", "+15559990000")
    monkeypatch.setenv("TWILIO_API_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("PUBLIC_URL", "https://real.example.com")
    code, text = run_cli(["--call", str(question_wav), "--json", "--out", str(tmp_path / "said")], tmp_path)
    assert code == 0, text
    result = json.loads(text)
    assert set(result) == {"transcripts", "replies", "turns", "media", "ended_by", "problems"}
    [heard] = result["transcripts"]
    assert heard["speaker"] == "caller"
    assert len({"tell", "joke", "weather"} & set(re.findall(r"[a-z]+", heard["text"].lower()))) >= 2, heard
    [reply] = result["replies"]
    assert reply["text"] and reply["audio_seconds"] > 0.3 and not reply["interrupted"]
    [turn] = result["turns"]
    assert turn["first_audio_ms"] > 0 and turn["breakdown"]["end_of_speech_to_first_frame"] > 0
    assert result["media"]["caller_frames"] > 50 and result["media"]["dropped"] == 0
    assert result["ended_by"] == "caller" and result["problems"] == []
    [saved] = sorted((tmp_path / "said").glob("call-reply-*.wav"))
    with wave.open(str(saved), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (8000, 1) and wav.getnframes() > 8000 * 0.3


@needs_whisper
def test_simulate_call_text_report(question_wav: Path, tmp_path: Path) -> None:
    code, text = run_cli(["--call", str(question_wav)], tmp_path)
    assert code == 0, text
    assert text.startswith("Heard:\n  caller: ")
    assert "Replied:\n  1. (" in text and "Latency per turn (ms)" in text and "Problems: none" in text


@pytest.mark.parametrize("argv, message", [
    (["--call", "missing.wav"], "no such file"),
    (["--call", "GOOD", "--at", "Alice=1"], "--at is for --speak"),
])
def test_simulate_call_bad_arguments(argv: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.wav"
    with wave.open(str(good), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x01\x00" * 800)
    argv = [str(good) if a == "GOOD" else a.replace("GOOD", str(good)) for a in argv]
    code, _ = run_cli(argv, tmp_path)
    assert code == 2
    assert message in capsys.readouterr().err


def test_call_and_speak_together_is_an_argument_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(["--call", "a.wav", "--speak", "Alice=a.wav"], tmp_path)
    assert exc.value.code == 2
