from __future__ import annotations

from bot.voice.turns import PendingTurn, TurnPolicy, VoiceMode, mentions_any


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def turn(user: int, text: str, at: float) -> PendingTurn:
    return PendingTurn(user, f"user{user}", text, ended_at=at, final_at=at + 0.3)


def test_mentions_ignore_case_accents_and_punctuation() -> None:
    assert mentions_any("Hey, NOVA! what's up", ["nova"])
    assert mentions_any("ok Novà, tell me", ["Nova"])
    assert mentions_any("hey computer please", ["hey computer"])
    assert not mentions_any("supernova is bright", ["nova"])
    assert not mentions_any("anything", [""])


def test_addressed_mode_rules() -> None:
    clock = Clock()
    policy = TurnPolicy(bot_names=("Nova",), wake_phrases=("computer",), clock=clock)
    assert not policy.wants(1, "what time is it", humans_present=3)
    assert policy.wants(1, "Nova, what time is it", humans_present=3)
    assert policy.wants(1, "computer: lights", humans_present=3)
    assert policy.wants(1, "what time is it", humans_present=1)  # the bot is the only other participant
    assert not policy.wants(1, "   ", humans_present=1)
    policy.answered(1)
    assert policy.wants(1, "and tomorrow?", humans_present=3)  # a follow-up
    assert not policy.wants(2, "and tomorrow?", humans_present=3)
    clock.now += 60
    assert not policy.wants(1, "and tomorrow?", humans_present=3)


def test_always_and_push_to_talk() -> None:
    clock = Clock()
    assert TurnPolicy(bot_names=("Nova",), mode=VoiceMode.ALWAYS, clock=clock).wants(1, "hi", humans_present=5)
    ptt = TurnPolicy(bot_names=("Nova",), mode=VoiceMode.PUSH_TO_TALK, clock=clock)
    assert not ptt.wants(1, "Nova hi", humans_present=1)
    ptt.open_listening_window(1, 30)
    assert ptt.wants(1, "hi", humans_present=5) and not ptt.wants(2, "hi", humans_present=5)
    clock.now += 31
    assert not ptt.wants(1, "hi", humans_present=5)


def test_queue_merges_a_speakers_turns_and_drops_stale_ones() -> None:
    clock = Clock()
    policy = TurnPolicy(bot_names=("Nova",), mode=VoiceMode.ALWAYS, stale_after=10, clock=clock)
    assert policy.offer(turn(1, "first", 100), humans_present=2)
    assert policy.offer(turn(2, "question", 101), humans_present=2)
    assert policy.offer(turn(1, "and more", 102), humans_present=2)
    assert len(policy) == 2
    clock.now = 105
    first = policy.next_turn()
    assert first is not None and first.user_id == 2
    merged = policy.next_turn()
    assert merged is not None and merged.text == "first and more"
    policy.offer(turn(3, "old news", 106), humans_present=2)
    clock.now = 120
    assert policy.next_turn() is None
    assert policy.dropped[-1][0].text == "old news" and "stale" in policy.dropped[-1][1]


def test_forget_drops_a_leavers_turns() -> None:
    policy = TurnPolicy(bot_names=("Nova",), mode=VoiceMode.ALWAYS, clock=Clock())
    policy.offer(turn(1, "hello", 100), humans_present=2)
    policy.forget(1)
    assert policy.next_turn() is None


def test_auto_is_the_default_and_follows_the_room() -> None:
    clock = Clock()
    policy = TurnPolicy(bot_names=("Nova",), clock=clock)
    assert policy.mode == VoiceMode.AUTO
    assert policy.wants(1, "what time is it", humans_present=1)  # alone with the bot: no name needed
    assert not policy.wants(1, "what time is it", humans_present=2)  # a second person came in
    assert policy.wants(2, "Nova, what time is it", humans_present=2)
    assert "one person" in policy.rule_now(1) and "2 people" in policy.rule_now(2)


def test_addressed_mode_needs_the_name_even_alone() -> None:
    clock = Clock()
    policy = TurnPolicy(bot_names=("Nova",), mode=VoiceMode.ADDRESSED, clock=clock)
    assert not policy.wants(1, "what time is it", humans_present=1)
    assert policy.wants(1, "nova what time is it", humans_present=1)
    policy.answered(1)
    assert policy.wants(1, "and tomorrow?", humans_present=1)  # a follow-up still counts


def test_scribe_mode_answers_nobody() -> None:
    policy = TurnPolicy(bot_names=("Nova",), mode=VoiceMode.SCRIBE, clock=Clock())
    assert not policy.wants(1, "Nova, answer me", humans_present=1)
    assert not policy.offer(turn(1, "Nova, answer me", 100), humans_present=1)
    assert "notes" in policy.rule_now(1)


def test_every_mode_is_offered_by_settings_and_simulate() -> None:
    from bot.cli import build_parser
    from bot.settings import VOICE_MODES, load_settings

    assert set(VOICE_MODES) == set(VoiceMode.ALL)
    assert load_settings({}, env_file=None).voice_mode == VoiceMode.AUTO
    for mode in VoiceMode.ALL:
        args = build_parser().parse_args(["simulate", "--speak", "A=a.wav", "--mode", mode])
        assert args.mode == mode
