from __future__ import annotations

from bot.voice.echo import EchoGuard, words_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bot_says(guard: EchoGuard, clock: Clock, text: str, seconds: float) -> None:
    """The bot plays ``text`` for ``seconds``, then it is said (the clock moves on)."""
    guard.playing(text)
    clock.now += seconds
    guard.said(text)


def test_words_fold_case_accents_and_punctuation() -> None:
    assert words_of("Café, au LAIT!") == ["cafe", "au", "lait"]


def test_the_bots_sentence_heard_back_late_and_misrecognised_is_echo() -> None:
    clock = Clock()
    guard = EchoGuard(clock=clock)
    bot_says(guard, clock, "The weather in Lisbon is sunny and warm today.", 2.5)
    # Echo: the listener's microphone began hearing it 400 ms after the bot began.
    assert guard.is_echo("the weather in lisbin is sunny and warm", speech_started=1000.4)
    assert guard.is_echo("sunny and warm today", speech_started=1002.0)
    assert guard.dropped == 2


def test_something_else_said_over_the_bot_is_not_echo() -> None:
    clock = Clock()
    guard = EchoGuard(clock=clock)
    bot_says(guard, clock, "I think you should try the park by the river.", 2.0)
    assert not guard.is_echo("no I think you are wrong about that", speech_started=1000.5)
    assert not guard.is_echo("stop", speech_started=1000.5)
    assert guard.dropped == 0


def test_repeating_the_bot_on_purpose_later_is_not_echo() -> None:
    clock = Clock()
    guard = EchoGuard(clock=clock)
    bot_says(guard, clock, "The meeting is at nine tomorrow.", 2.0)
    clock.now += 6.0
    assert not guard.is_echo("the meeting is at nine tomorrow", speech_started=clock.now - 1.5)


def test_echo_of_a_sentence_still_playing_is_caught() -> None:
    clock = Clock()
    guard = EchoGuard(clock=clock)
    bot_says(guard, clock, "First sentence about the harbour.", 1.0)
    guard.playing("And a second one about the boats.")
    assert guard.is_echo("first sentence about the harbour", speech_started=clock.now + 0.2)
    clock.now += 0.5
    assert guard.is_echo("and a", speech_started=clock.now - 0.1)  # the echo of what plays now


def test_old_speech_is_forgotten() -> None:
    clock = Clock()
    guard = EchoGuard(clock=clock, keep=30)
    guard.said("An old sentence nobody will echo.", started=900.0, ended=901.0)
    clock.now += 100
    guard.said("A new one.")
    assert not guard.is_echo("an old sentence nobody will echo", speech_started=901.2)


def test_one_word_is_echo_only_while_the_bot_talks() -> None:
    clock = Clock()
    guard = EchoGuard(clock=clock)
    guard.playing("Please try again later.")
    clock.now += 0.5
    assert guard.is_echo("please", speech_started=1000.3)  # the first interim of an echo
    clock.now += 1.5
    guard.said("Please try again later.")
    assert guard.is_echo("again", speech_started=1001.5)  # the first interim of an echo
    assert not guard.is_echo("again", speech_started=1002.5)  # a person asking right after


def test_an_answer_that_reuses_the_bots_question_is_not_echo() -> None:
    # Seen on a call: the caller's "I would like to know more about" began just after the bot asked
    # "Would you like to hear more about it?" and shares five of its seven words, in order.
    clock = Clock()
    guard = EchoGuard(clock=clock)
    bot_says(guard, clock, "Rome was founded long ago. Would you like to hear more about it?", 3.0)
    clock.now += 0.6
    assert not guard.is_echo("I would like to know more about", speech_started=clock.now - 0.3)
    # The echo path's delay after the bot stopped only carries its last words back.
    assert guard.is_echo("hear more about it", speech_started=clock.now - 0.4)
    assert guard.is_echo("hear more abut it", speech_started=clock.now - 0.4)  # misheard
    assert guard.dropped == 2
