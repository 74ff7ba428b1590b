"""Benchmark: what choosing and speaking a language costs per message.

- ``detector_load_ms``: loading py3langid's model (once per process, at start-up off the event loop).
- ``detect_us``: median microseconds to detect the language of one chat line, per language.
- ``split_chars_per_s``: the streaming sentence splitter fed 8-character deltas, per script.
- ``normalise_us``: median microseconds of ``normalize_for_speech`` for one sentence, per language.

Usage: python -m bench.language [--rounds 200]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from audio.speech import SentenceSplitter, normalize_for_speech

LINES = {
    "en": "What time does the meeting start tomorrow morning?",
    "de": "Wann fängt das Treffen morgen früh eigentlich an?",
    "fr": "À quelle heure commence la réunion demain matin ?",
    "es": "¿A qué hora empieza la reunión mañana por la mañana?",
    "pt": "Que horas começa a reunião amanhã de manhã?",
    "ja": "明日の朝の会議は何時に始まりますか？",
    "ar": "متى يبدأ الاجتماع صباح الغد؟",
    "hi": "कल सुबह बैठक कितने बजे शुरू होगी?",
}
TEXTS = {
    "latin": "Dr. Smith arrived at 3.14 p.m. today. ¿Vienes mañana? ¡Claro que sí! It costs $5, e.g. a coffee. " * 20,
    "cjk": "今日はいい天気ですね。明日も晴れるでしょうか？公園に行きましょう！" * 20,
    "arabic": "مرحبا، كيف حالك؟ أنا بخير. شكرا جزيلا! " * 20,
    "devanagari": "नमस्ते। आप कैसे हैं? मैं ठीक हूँ। धन्यवाद! " * 20,
}
SENTENCES = {
    "en": "On 2026-12-01 at 14:30 we walked 5 km, e.g. to the park, and paid $12.50.",
    "de": "Am 01.12.2026 um 14:30 sind wir z.B. 5 km gelaufen und haben 12,50 € bezahlt.",
    "fr": "Le 2026-12-01 à 14:30, nous avons marché 5 km, etc., et payé 12,50 €.",
    "es": "El 01/12/2026 a las 14:30 caminamos 5 km aprox. y pagamos 12,50 €.",
    "pt": "Em 2026-12-01 às 14:30 andamos 5 km e pagamos R$ 12,50.",
    "ja": "2026-12-01の14:30に5 km歩いて、25°Cでした。",
}


def _median_us(fn: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1e6)
    return round(statistics.median(times), 1)


def run(rounds: int) -> dict[str, object]:
    from bot.i18n import detect as detect_module

    start = time.perf_counter()
    detect_module.preload()
    load_ms = round((time.perf_counter() - start) * 1000, 1)
    detected = {code: (found.language if (found := detect_module.detect(line)) else None) for code, line in LINES.items()}
    detect_us = {code: _median_us(lambda line=line: detect_module.detect(line), rounds) for code, line in LINES.items()}

    split: dict[str, float] = {}
    for script, text in TEXTS.items():
        start = time.perf_counter()
        for _ in range(max(1, rounds // 20)):
            splitter = SentenceSplitter()
            for i in range(0, len(text), 8):
                splitter.feed(text[i:i + 8])
            splitter.flush()
        seconds = time.perf_counter() - start
        split[script] = round(len(text) * max(1, rounds // 20) / seconds)

    normalise = {code: _median_us(lambda s=sentence, c=code: normalize_for_speech(s, language=c), rounds)
                 for code, sentence in SENTENCES.items()}
    return {"detector_load_ms": load_ms, "detected": detected, "detect_us": detect_us,
            "split_chars_per_s": split, "normalise_us": normalise, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds)))


if __name__ == "__main__":
    main()
