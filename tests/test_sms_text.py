"""Pure SMS text helpers: normalisation, segmenting, keywords, link codes."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.sms.text import (
    SMS_SEGMENT_LIMIT,
    Keyword,
    classify_keyword,
    mask_number,
    normalize_for_sms,
    parse_link_code,
    split_sms,
    truncate_for_agent,
)


def test_markdown_is_stripped() -> None:
    md = (
        "# Hello there\n\n"
        "I am **very** _happy_ to `help`.\n\n\n"
        "```python\nprint('hi')\n```\n"
        "> quoted line\n"
        "* one\n"
        "- two\n"
        "---\n"
        "See [the docs](https://example.com/docs) or <https://example.org>.  Bye   now!"
    )
    out = normalize_for_sms(md)
    assert out == (
        "Hello there\n"
        "I am very happy to help.\n"
        "print('hi')\n"
        "quoted line\n"
        "- one\n"
        "- two\n"
        "See the docs (https://example.com/docs) or https://example.org. Bye now!"
    )


def test_identifiers_with_underscores_and_math_survive() -> None:
    assert normalize_for_sms("use snake_case_name and 2*3*4") == "use snake_case_name and 2*3*4"


def test_blank_input_normalises_to_empty() -> None:
    assert normalize_for_sms(" \n\n```\n```\n ") == ""


def test_short_text_is_one_segment() -> None:
    assert split_sms("Hello.") == ["Hello."]
    assert split_sms("   ") == []


def test_split_prefers_sentence_boundaries() -> None:
    sentence = "This is a sentence of moderate length that ends here. "
    text = sentence * 60  # ~3,240 characters
    segments = split_sms(text)
    assert len(segments) == 3
    assert all(len(s) <= SMS_SEGMENT_LIMIT for s in segments)
    assert all(s.endswith("ends here.") for s in segments)


def test_split_falls_back_to_words_then_hard_cut() -> None:
    words = " ".join(["word"] * 500)  # no sentence ends
    segments = split_sms(words, limit=100)
    assert all(len(s) <= 100 and not s.endswith(" ") for s in segments)
    assert " ".join(segments) == words
    blob = "x" * 250
    assert split_sms(blob, limit=100) == ["x" * 100, "x" * 100, "x" * 50]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n\t") + ["é", "😀"]), max_size=600), st.integers(2, 120))
def test_split_never_exceeds_limit_and_loses_no_words(text: str, limit: int) -> None:
    segments = split_sms(text, limit=limit)
    assert all(0 < len(s) <= limit for s in segments)
    assert all(s == s.strip() for s in segments)
    # Only whitespace at cut points may disappear.
    assert re.sub(r"\s+", "", "".join(segments)) == re.sub(r"\s+", "", text)


def test_keywords() -> None:
    for word in ("STOP", "stop", " Stop. ", "STOPALL", "unsubscribe", "Cancel", "END", "quit"):
        assert classify_keyword(word) is Keyword.STOP, word
    for word in ("START", "yes", "Unstop"):
        assert classify_keyword(word) is Keyword.START, word
    for word in ("HELP", "info!"):
        assert classify_keyword(word) is Keyword.HELP, word
    for text in ("stop it", "please help", "", "yes please"):
        assert classify_keyword(text) is None, text


def test_link_codes() -> None:
    assert parse_link_code("LINK 123456") == ("123456", True)
    assert parse_link_code("link: 123-456") == ("123456", True)
    assert parse_link_code(" 123456 ") == ("123456", False)
    assert parse_link_code("link") == (None, True)
    assert parse_link_code("LINK abc") == (None, True)
    assert parse_link_code("linked lists are fun, tell me more about them") is None
    assert parse_link_code("1234567") is None
    assert parse_link_code("hello") is None


def test_mask_number_keeps_only_country_code_and_last_four() -> None:
    assert mask_number("+15551234567") == "+1******4567"
    assert "123" not in mask_number("+15551234567")[:-4]


def test_truncate_for_agent() -> None:
    text = "word " * 2000  # 10,000 characters
    cut, was_cut = truncate_for_agent(text, 2000)
    assert was_cut and len(cut) <= 2002 and cut.endswith(" …")
    assert truncate_for_agent("short", 2000) == ("short", False)
