from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.speech import SentenceSplitter, normalize_for_speech


def split_all(text: str, chunks: list[int] | None = None, **kwargs: int) -> list[str]:
    splitter = SentenceSplitter(**kwargs)
    out: list[str] = []
    if chunks is None:
        out += splitter.feed(text)
    else:
        pos = 0
        for size in chunks:
            out += splitter.feed(text[pos : pos + size])
            pos += size
        out += splitter.feed(text[pos:])
    return out + splitter.flush()


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# -- normalize_for_speech ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("**Hello** there, _friend_!", "Hello there, friend!"),
        ("Read [the docs](https://docs.python.org/3/).", "Read the docs."),
        ("See https://www.example.com/path?q=1 for more.", "See a link to example.com for more."),
        ("Try <https://Example.org>.", "Try a link to example.org."),
        ("Run `git status` now.", "Run git status now."),
        ("# Heading\n- one\n- two", "Heading. one. two"),
        ("> quoted text", "quoted text"),
        ("Here:\n```python\nprint('x')\n```\nDone.", "Here: Done."),
        ("We sold 1234567 units.", "We sold 1,234,567 units."),
        ("It costs 1234567.50 dollars", "It costs 1,234,567.50 dollars"),
        ("In 2024 we had 3.14 pies.", "In 2024 we had 3.14 pies."),
        ("Call 555-123-4567.", "Call 5 5 5, 1 2 3, 4 5 6 7."),
        ("Call (555) 123 4567", "Call 5 5 5, 1 2 3, 4 5 6 7"),
        ("Code 00123", "Code 0 0 1, 2 3"),
        ("Nice 🎉🎉 <:party:123456> <a:dance:42> :smile:", "Nice"),
        ("Hi <@123> and <@!456>, see <#789>.", "Hi Alice and someone, see general."),
        ("~~old~~ ||secret|| ***both***", "old secret both"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("a   lot\t of   space", "a lot of space"),
    ],
)
def test_normalize_for_speech(text: str, spoken: str) -> None:
    assert normalize_for_speech(text, {"123": "Alice", "789": "general"}) == spoken


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t ", "😀🎉👍🏽🇺🇸", "<:party:123> <a:x:1>", "```\ncode only\n```", "```py\nunterminated code", "---", "** **"],
)
def test_nothing_speakable_gives_empty_string(text: str) -> None:
    assert normalize_for_speech(text) == ""


def test_5000_character_reply_is_normalised() -> None:
    text = ("**Point** one: see https://example.com/x and call 555-123-4567. " * 80)[:5000]
    spoken = normalize_for_speech(text)
    assert "**" not in spoken and "https" not in spoken and "a link to example.com" in spoken


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_normalize_never_raises(text: str) -> None:
    result = normalize_for_speech(text)
    assert result == result.strip()
    assert "  " not in result


# -- SentenceSplitter --------------------------------------------------------------------------


def test_splits_sentences_as_they_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there") == []
    assert splitter.feed(". How are") == ["Hello there."]
    assert splitter.feed(" you? I'm fine!") == ["How are you?"]
    assert splitter.flush() == ["I'm fine!"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello Mr. Smith. Bye.", ["Hello Mr. Smith.", "Bye."]),
        ("Ask Dr. Who about it. Ok.", ["Ask Dr. Who about it.", "Ok."]),
        ("Use tools, e.g. a hammer. Then stop.", ["Use tools, e.g. a hammer.", "Then stop."]),
        ("That is, i.e. the thing. Yes.", ["That is, i.e. the thing.", "Yes."]),
        ("Pi is 3.14 exactly. Yes.", ["Pi is 3.14 exactly.", "Yes."]),
        ("Well... I guess so. Fine.", ["Well... I guess so.", "Fine."]),
        ("Wait… What? No.", ["Wait…", "What?", "No."]),
        ("I live in the U.S. and like it. Ok.", ["I live in the U.S. and like it.", "Ok."]),
        ("I moved to the U.S. Then I left.", ["I moved to the U.S.", "Then I left."]),
        ("See example.com/a.b.c for it. Ok.", ["See example.com/a.b.c for it.", "Ok."]),
        ("Visit https://x.org/v1.2/doc. Then go.", ["Visit https://x.org/v1.2/doc.", "Then go."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("First line\nSecond line", ["First line", "Second line"]),
        ("Para one\n\nPara two.", ["Para one", "Para two."]),
        ("Steps:\n1. Open it\n2. Close it", ["Steps:", "1. Open it", "2. Close it"]),
        ("By J. R. R. Tolkien. Ok.", ["By J. R. R. Tolkien.", "Ok."]),
        ("Really?! Yes.", ["Really?!", "Yes."]),
    ],
)
def test_boundaries(text: str, expected: list[str]) -> None:
    assert split_all(text) == expected
    assert split_all(text, [1] * len(text)) == expected  # char by char gives the same


def test_code_blocks_are_one_piece_and_never_split() -> None:
    text = "Here is code:\n```py\nx = 1. y = 2.\nprint(x)\n```\nDone. Bye."
    assert split_all(text) == ["Here is code:", "```py\nx = 1. y = 2.\nprint(x)\n```", "Done.", "Bye."]
    splitter = SentenceSplitter()
    assert splitter.feed("Look. ```py\nx = 1. y") == ["Look."]
    assert splitter.feed(" = 2.\n") == []  # inside the block: nothing yet
    assert splitter.feed("```\nAfter.") == ["```py\nx = 1. y = 2.\n```"]
    assert splitter.flush() == ["After."]


def test_first_long_clause_is_emitted_early_and_deterministically() -> None:
    text = "I was thinking about what you said yesterday, and honestly it made a lot of sense to me when I"
    splitter = SentenceSplitter(first_clause_chars=60, min_clause_chars=20)
    early = splitter.feed(text)
    assert early == ["I was thinking about what you said yesterday,"]
    assert split_all(text, [1] * len(text), first_clause_chars=60, min_clause_chars=20)[0] == early[0]
    # Only the first sentence of a stream is cut at a clause.
    later = SentenceSplitter(first_clause_chars=60, min_clause_chars=20)
    assert later.feed("Ok. " + text) == ["Ok."]


def test_empty_and_whitespace_input() -> None:
    assert split_all("") == []
    assert split_all("   \n\n  ") == []


def test_5000_character_stream() -> None:
    text = ("This is sentence number one, with a clause. And e.g. another one! " * 80)[:5000]
    out = split_all(text, [7] * 800)
    assert squash("".join(out)) == squash(text)
    assert len(out) > 100


_alphabet = st.sampled_from(list("abc XYZ.,!?…\n\"'`:/-0123") + ["Mr.", "e.g.", "...", "```", "3.14", "https://a.b/c.", " ", "\n\n"])


@given(st.lists(_alphabet, max_size=80), st.lists(st.integers(min_value=1, max_value=9), max_size=40))
@settings(max_examples=400, deadline=None)
def test_property_output_concatenates_to_input(tokens: list[str], chunks: list[int]) -> None:
    text = "".join(tokens)
    out = split_all(text, chunks)
    assert squash("".join(out)) == squash(text)
    assert all(piece == piece.strip() and piece for piece in out)


@given(st.text(max_size=200), st.lists(st.integers(min_value=1, max_value=20), max_size=20))
@settings(max_examples=300, deadline=None)
def test_property_never_raises_on_any_text(text: str, chunks: list[int]) -> None:
    out = split_all(text, chunks)
    assert squash("".join(out)) == squash(text)


def test_a_bare_phone_number_is_read_as_digits_not_billions() -> None:
    from audio.speech import normalize_for_speech

    spoken = normalize_for_speech("Call 5551234567 today.")
    assert "billion" not in spoken and "5,551" not in spoken
    assert spoken.replace(",", "").replace(" ", "").startswith("Call5551234567")
    assert normalize_for_speech("It costs 1234567 dollars.") == "It costs 1,234,567 dollars."


def test_a_first_clause_can_end_at_a_comma_that_ends_the_text_so_far() -> None:
    """For speech (clause_at_end): "Sure," goes to synthesis before the next token; "So," is too
    short and "3," of "3,000" waits for its digits."""
    from audio.speech import SentenceSplitter

    def pieces(tokens: list[str]) -> list[tuple[int, list[str]]]:
        splitter = SentenceSplitter(first_clause_chars=5, min_clause_chars=4, clause_at_end=True)
        out = [(i, got) for i, t in enumerate(tokens) if (got := splitter.feed(t))]
        return out + [(-1, splitter.flush())]

    assert pieces(["Sure", ",", " let", " me", " think", "."]) == [(1, ["Sure,"]), (-1, ["let me think."])]
    assert pieces(["So", ",", " what", "?"]) == [(-1, ["So, what?"])]
    assert pieces(["It", " is", " 3", ",", "000", "."]) == [(-1, ["It is 3,000."])]
    plain = SentenceSplitter()
    assert plain.feed("Sure,") == []  # text chat keeps whole sentences
