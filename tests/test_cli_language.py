"""`voicebot chat --language` and `voicebot simulate --language`."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from bot.cli import main


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))


def run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--env-file", os.devnull, *argv], stdin=io.StringIO(stdin), out=out)
    return code, out.getvalue()


def test_chat_in_a_fixed_language() -> None:
    code, text = run(["chat", "--language", "fr"], "I feel tired today\n/quit\n")
    assert code == 0
    # The built-in script knows only English: it says so in French rather than pretend.
    assert "Je ne suis qu'un petit script intégré" in text


def test_chat_auto_follows_each_message() -> None:
    code, text = run(["chat", "--language", "auto"],
                     "Hallo, wie geht es dir heute?\nI feel tired today and I miss my mother\n/quit\n")
    assert code == 0
    replies = [line.split("> ", 1)[1] for line in text.splitlines() if line.startswith("you> ")]
    assert "Ich bin ein einfaches eingebautes Skript" in text
    assert sum("Skript" in r for r in replies) == 1  # the English line got a real ELIZA answer


def test_a_bad_language_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(["chat", "--language", "klingon"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--language" in err and "klingon" in err
    code, _ = run(["simulate", "--speak", "a=/nonexistent.wav", "--language", "xx"])
    assert code == 2 and "--language" in capsys.readouterr().err


def test_simulate_in_german_answers_in_german(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from audio.native import load_libopus
    from bot.providers import local_stt_available
    from tests.speech_samples import espeak_wav

    if not local_stt_available():
        pytest.skip("faster-whisper is not installed")
    load_libopus()
    monkeypatch.setenv("AGENT_ENGINE", "eliza")
    monkeypatch.setenv("TTS_ENGINE", "espeak")
    wav = espeak_wav("Tell me a joke about computers", tmp_path / "joke.wav")
    code, text = run(["simulate", "--speak", f"Alice={wav}", "--json", "--language", "de"])
    assert code == 0, text
    result = json.loads(text)
    replies = result["replies"]
    # The place speaks German (the local recognizer listens for German: the multilingual model when
    # installed, else tiny.en hears it as English), and the built-in script says in German that it
    # only knows English.
    assert replies and replies[0]["text"].startswith("Ich bin ein einfaches eingebautes Skript"), replies
    assert replies[0]["audio_seconds"] > 0.3
