"""The streaming sentence splitter across scripts: property tests (hypothesis) and worked examples.

Every generated text is a list of known sentences in Latin (English, German, French, Spanish,
Portuguese), Cyrillic, Chinese, Japanese, Arabic and Devanagari script, with numbers and
abbreviations inside them, joined the way each script joins sentences (CJK: often no space).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio.speech import SentenceSplitter

# Words that can stand anywhere in a sentence (never a single letter, never a terminal inside).
_LATIN_WORDS = ["hello", "Welt", "ça", "va", "bien", "mañana", "está", "você", "não", "Straße", "été", "pão", "niño"]
_NUMBERS = ["3.14", "1.234,56", "12:30", "2026-12-01", "1,000", "0.5", "v2.0"]
_ABBREVIATIONS = ["Dr.", "Mr.", "z.B.", "bzw.", "Sra.", "Mme.", "e.g.", "vs.", "Nr. 5", "No. 7", "approx."]
_SCRIPTS: dict[str, tuple[list[str], str, list[str], str]] = {
    # name: (words, word separator, terminals, opener-closer pairs are handled separately)
    "latin": (_LATIN_WORDS, " ", [".", "!", "?"], ""),
    "cyrillic": (["Привет", "как", "дела", "хорошо", "спасибо"], " ", [".", "!", "?"], ""),
    "chinese": (["你好", "今天", "天气", "很好", "我们", "走吧"], "", ["。", "！", "？"], "，"),
    "japanese": (["こんにちは", "元気", "です", "東京", "ありがとう", "カタカナ"], "", ["。", "！", "？"], "、"),
    "arabic": (["مرحبا", "كيف", "حالك", "شكرا", "جدا"], " ", [".", "؟", "!"], "،"),
    "hindi": (["नमस्ते", "आप", "कैसे", "हैं", "धन्यवाद"], " ", ["।", "?"], ""),
}
_NO_SPACE_AFTER = set("。！？")


@st.composite
def _sentence(draw: st.DrawFn) -> str:
    script = draw(st.sampled_from(sorted(_SCRIPTS)))
    words, sep, terminals, comma = _SCRIPTS[script]
    body = draw(st.lists(st.sampled_from(words), min_size=1, max_size=6))
    if sep == " ":
        # Numbers and abbreviations sit between words, never last (where "Dr." would end the sentence).
        extras = draw(st.lists(st.sampled_from(_NUMBERS + _ABBREVIATIONS), max_size=2))
        for extra in extras:
            body.insert(draw(st.integers(0, len(body) - 1)), extra)
    if comma and len(body) > 1 and draw(st.booleans()):
        body[0] += comma
    text = sep.join(body)
    if sep == " " and comma == "،" and draw(st.booleans()):
        text = text.replace(" ", "، ", 1)
    if script == "latin" and draw(st.booleans()):
        # Spanish: the inverted opener belongs to its sentence.
        opener, closer = draw(st.sampled_from([("¿", "?"), ("¡", "!")]))
        return f"{opener}{text[0].upper()}{text[1:]}{closer}"
    if script == "latin":
        text = text[0].upper() + text[1:]
    return text + draw(st.sampled_from(terminals))


@st.composite
def _document(draw: st.DrawFn) -> tuple[list[str], str]:
    sentences = draw(st.lists(_sentence(), min_size=1, max_size=6))
    text = sentences[0]
    for sentence in sentences[1:]:
        if text[-1] in _NO_SPACE_AFTER:
            gap = draw(st.sampled_from(["", " ", "\n"]))
        else:
            gap = draw(st.sampled_from([" ", "  ", "\n", " \n "]))
        text += gap + sentence
    return sentences, text


def _feed(text: str, cuts: list[int], **kwargs: int) -> list[str]:
    splitter = SentenceSplitter(**kwargs)
    out: list[str] = []
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    for a, b in zip(points, points[1:]):
        out.extend(splitter.feed(text[a:b]))
    out.extend(splitter.flush())
    return out


_NO_EARLY = {"first_clause_chars": 10**9}
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_document(), st.lists(st.integers(0, 10_000), max_size=12))
def test_property_every_sentence_comes_out_whole_in_any_script(doc: tuple[list[str], str], cuts: list[int]) -> None:
    sentences, text = doc
    assert _feed(text, cuts, **_NO_EARLY) == sentences


@_SETTINGS
@given(_document(), st.lists(st.integers(0, 10_000), max_size=12), st.lists(st.integers(0, 10_000), max_size=12))
def test_property_any_chunking_gives_the_same_sentences(
    doc: tuple[list[str], str], cuts_a: list[int], cuts_b: list[int]
) -> None:
    _sentences, text = doc
    assert _feed(text, cuts_a, **_NO_EARLY) == _feed(text, cuts_b, **_NO_EARLY) == _feed(text, [], **_NO_EARLY)


@_SETTINGS
@given(_document(), st.lists(st.integers(0, 10_000), max_size=12))
def test_property_joined_pieces_give_back_the_text_with_the_early_clause_on(
    doc: tuple[list[str], str], cuts: list[int]
) -> None:
    _sentences, text = doc
    pieces = _feed(text, cuts)
    flat = re.sub(r"\s", "", text)
    assert re.sub(r"\s", "", "".join(pieces)) == flat
    cuts_at, at = set(), 0
    for piece in pieces[:-1]:
        at += len(re.sub(r"\s", "", piece))
        cuts_at.add(at)
    for token in _NUMBERS + _ABBREVIATIONS:
        squeezed = re.sub(r"\s", "", token)
        for match in re.finditer(re.escape(squeezed), flat):
            # Never inside a number, never right after an abbreviation that is not a sentence's end.
            assert not any(match.start() < c < match.end() for c in cuts_at), (token, pieces)
            if token in _ABBREVIATIONS and match.end() < len(flat):
                assert match.end() not in cuts_at, (token, pieces)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("你好。今天天气很好！我们走吧？", ["你好。", "今天天气很好！", "我们走吧？"]),
        ("こんにちは。「元気ですか？」と聞いた。", ["こんにちは。", "「元気ですか？」", "と聞いた。"]),
        ("Hola. ¿Qué tal? ¡Muy bien! Gracias.", ["Hola.", "¿Qué tal?", "¡Muy bien!", "Gracias."]),
        ("Ya viene, etc. ¿Vienes?", ["Ya viene, etc.", "¿Vienes?"]),
        ("Creo que no. Vamos a ver el No. 5 hoy.", ["Creo que no.", "Vamos a ver el No. 5 hoy."]),
        ("مرحبا، كيف حالك؟ أنا بخير.", ["مرحبا، كيف حالك؟", "أنا بخير."]),
        ("नमस्ते। आप कैसे हैं?", ["नमस्ते।", "आप कैसे हैं?"]),
        ("Das kostet z.B. 3,50 Euro. Danach Nr. 4 bzw. 5.", ["Das kostet z.B. 3,50 Euro.", "Danach Nr. 4 bzw. 5."]),
        ("It is 3.14. Mixed: Ich komme. 我来了。OK!", ["It is 3.14.", "Mixed: Ich komme.", "我来了。", "OK!"]),
    ],
)
def test_script_examples(text: str, expected: list[str]) -> None:
    assert _feed(text, [], **_NO_EARLY) == expected
    assert _feed(text, list(range(len(text))), **_NO_EARLY) == expected


def test_cjk_commas_give_an_early_first_clause() -> None:
    text = "今日はとても良い天気なので、" + "公園に行って友達と一緒に長い時間散歩をしました" * 4 + "。"
    pieces = _feed(text, list(range(0, len(text), 3)), first_clause_chars=20, min_clause_chars=5)
    assert pieces[0] == "今日はとても良い天気なので、"
    assert "".join(pieces) == text
