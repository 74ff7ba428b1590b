"""Property-based fuzz of the packet path: no datagram raises, and none reaches the catch-all."""

from __future__ import annotations

import types

import davey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio.receive import INTERNAL_ERROR, VoicePacket, VoiceReceiver
from bot.loopback.mls import ExternalSender, establish_group
from tests.dave_group import TRANSPORT_KEY, seal

BOT, ALICE = 1, 2
_bot, _alice = davey.DaveSession(1, BOT, 9), davey.DaveSession(1, ALICE, 9)
establish_group(ExternalSender(), _alice, _bot, 9)
# The receive core reads five attributes of discord.py's VoiceConnectionState; a namespace with the
# same attributes (and a real, ready davey session) stands in so hypothesis can run thousands of cases.
CONN = types.SimpleNamespace(secret_key=list(TRANSPORT_KEY), mode="aead_xchacha20_poly1305_rtpsize", ssrc=99,
                             dave_session=_bot, dave_protocol_version=1)
delivered: list[VoicePacket] = []
RECEIVER = VoiceReceiver(CONN, lambda: BOT, delivered.append)
RECEIVER.map_ssrc(5, ALICE)
VALID = seal(_alice.encrypt_opus(b"\xfc" + bytes(40)), ssrc=5, seq=1, ext_words=1, padding=3)

header_bits = st.builds(
    lambda b0, b1, rest: bytes([b0, b1]) + rest,
    st.integers(0, 255), st.sampled_from([0x78, 0xF8, 200, 201, 101, 0]), st.binary(min_size=0, max_size=80),
)


def _check(data: bytes) -> None:
    RECEIVER.on_datagram(data)
    assert RECEIVER.stats().dropped.get(INTERNAL_ERROR, 0) == 0


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None)
@given(header_bits)
def test_rtp_like_headers(data: bytes) -> None:
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255), st.integers(0, len(VALID)))
def test_mutated_valid_packets(pos: int, xor: int, cut: int) -> None:
    mutated = bytearray(VALID)
    mutated[pos] ^= xor
    _check(bytes(mutated[:cut] if cut else mutated))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 3), st.integers(0, 40), st.integers(0, 65535),
       st.lists(st.integers(0, 2**32 - 1), max_size=3))
def test_sealed_garbage_payloads(payload: bytes, ext: int, padding: int, seq: int, csrcs: list[int]) -> None:
    # correctly sealed transport around arbitrary (non-DAVE, mis-padded, empty) payloads
    _check(seal(payload, ssrc=5, seq=seq, ext_words=ext or None, padding=padding, csrcs=csrcs))
    _check(seal(payload, ssrc=77 + seq % 40, seq=seq))  # unknown SSRCs: trial decryption and hold buffer
