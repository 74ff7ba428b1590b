"""Locate the native pieces the voice pipeline needs without system packages.

libopus comes from the PyAV wheel (``av.libs/libopus-*.so*``) and FFmpeg from imageio-ffmpeg's
bundled static binary; each falls back to the system copy, and each can be overridden by a path
from settings.
"""

from __future__ import annotations

import ctypes.util
import glob
import logging
import os
import shutil
import threading

import discord.opus

__all__ = ["NativeLibraryError", "load_libopus", "find_ffmpeg"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded_from: str | None = None


class NativeLibraryError(RuntimeError):
    """A native library or binary could not be found; the message says how to get it."""


def _bundled_libopus() -> list[str]:
    try:
        import av
    except ImportError:
        return []
    base = os.path.dirname(av.__file__)
    # Linux wheels keep vendored libraries beside the package (av.libs); macOS wheels under .dylibs.
    patterns = [base + ".libs/libopus*.so*", os.path.join(base, ".dylibs", "libopus*.dylib")]
    return sorted(p for pattern in patterns for p in glob.glob(pattern))


def load_libopus(override: str | None = None) -> str:
    """Load libopus into discord.py once and return the path it came from.

    Order: ``override`` (settings), the copy bundled in the PyAV wheel, the system library.
    """
    global _loaded_from
    with _lock:
        if _loaded_from is not None and discord.opus.is_loaded():
            return _loaded_from
        candidates = [override] if override else []
        candidates += _bundled_libopus()
        system = ctypes.util.find_library("opus")
        if system:
            candidates.append(system)
        errors: list[str] = []
        for path in candidates:
            try:
                discord.opus.load_opus(path)
            except OSError as exc:
                errors.append(f"{path}: {exc}")
                continue
            _loaded_from = path
            log.debug("libopus loaded from %s", path)
            return path
        if override:
            raise NativeLibraryError(f"OPUS_LIBRARY={override!r} could not be loaded: {'; '.join(errors)}")
        raise NativeLibraryError(
            "libopus not found: install the 'av' package (its wheel bundles libopus) "
            "or the system package libopus0, or set OPUS_LIBRARY to the library's path"
        )


def find_ffmpeg(override: str | None = None) -> str:
    """Return an FFmpeg executable: ``override``, imageio-ffmpeg's bundled binary, or the system one."""
    if override:
        resolved = shutil.which(override) or (override if os.path.isfile(override) else None)
        if resolved is None or not os.access(resolved, os.X_OK):
            raise NativeLibraryError(f"FFMPEG_PATH={override!r} is not an executable file")
        return resolved
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and os.access(exe, os.X_OK):
            return exe
    except (ImportError, RuntimeError) as exc:  # imageio-ffmpeg raises RuntimeError when it has no binary
        log.debug("imageio-ffmpeg has no binary: %s", exc)
    system = shutil.which("ffmpeg")
    if system:
        return system
    raise NativeLibraryError(
        "FFmpeg not found (Piper's voice needs it): pip install 'voicebot[ffmpeg]' (a bundled static ffmpeg), "
        "or install the system package ffmpeg, or set FFMPEG_PATH"
    )
