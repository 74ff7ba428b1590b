"""Speech normalisation per language: numbers, dates, times, units and abbreviations as words."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.speech import normalize_for_speech
from audio.spoken import NORMALISED_LANGUAGES


@pytest.mark.parametrize(
    ("language", "text", "spoken"),
    [
        ("de", "Am 01.12.2026 um 14:30 kostet es z.B. 1.234,50 €.",
         "Am erster Dezember zweitausendsechsundzwanzig um vierzehn Uhr dreißig kostet es zum Beispiel "
         "eintausendzweihundertvierunddreißig Komma fünf Euro."),
        ("de", "Nr. 7 ist 5 km weit, bzw. 3,5 % mehr.", "Nummer sieben ist fünf Kilometer weit, beziehungsweise drei Komma fünf Prozent mehr."),
        ("fr", "Le 2026-12-01 à 9:05, M. Dupont paie 12,5 € pour 3 kg, etc.",
         "Le premier décembre deux mille vingt-six à neuf heures cinq, Monsieur Dupont paie douze virgule cinq euros pour trois kilos, et cetera."),
        ("es", "El 01/12/2026 a las 10:15 la Sra. López pagó $20 por 2,5 kg aprox.",
         "El uno de diciembre de dos mil veintiséis a las diez y quince la señora López pagó veinte dólares por dos coma cinco kilos aproximadamente."),
        ("pt", "Em 2026-12-01 às 8:00 o Sr. Silva pagou R$ 1.500,00 por 12 km.",
         "Em um de dezembro de dois mil e vinte e seis às oito o senhor Silva pagou mil e quinhentos reais por doze quilômetros."),
        ("ja", "2026-12-01の14:30に東京で25°Cでした。3.5 km 歩いた。",
         "二千二十六年十二月一日の十四時三十分に東京で二十五度でした。三点五キロメートル歩いた。"),
        ("en", "On 2026-12-01 we walked 5 km, e.g. to the park.", "On December first, 2026 we walked 5 kilometers, for example to the park."),
        ("de", "Ruf 555-123-4567 an, siehe https://example.com",
         "Ruf fünf fünf fünf, eins zwei drei, vier fünf sechs sieben an, siehe ein Link zu example.com"),
        ("ja", "<@1> さん、https://example.com を見て", "誰かさん、example.comへのリンクを見て"),
        ("fr", "Version v2 et mp3", "Version v2 et mp3"),
    ],
)
def test_spoken_forms_per_language(language: str, text: str, spoken: str) -> None:
    assert normalize_for_speech(text, language=language) == spoken


def test_english_keeps_its_digits() -> None:
    assert normalize_for_speech("We sold 1234567 units at 14:30.") == "We sold 1,234,567 units at 14:30."


def test_a_language_without_rules_keeps_its_digits_and_gets_english_placeholders() -> None:
    assert normalize_for_speech("Ответ 42, <@9>", language="ru") == "Ответ 42, someone"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NORMALISED_LANGUAGES + ("ar", "hi", "zz")), st.text(max_size=200))
def test_normalisation_never_raises_in_any_language(language: str, text: str) -> None:
    assert isinstance(normalize_for_speech(text, language=language), str)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([l for l in NORMALISED_LANGUAGES if l != "en"]), st.integers(-10**14, 10**14))
def test_every_number_becomes_words(language: str, number: int) -> None:
    spoken = normalize_for_speech(f"x {number} y", language=language)
    assert not any(ch.isdigit() for ch in spoken), spoken
