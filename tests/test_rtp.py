"""RTP parse, filters and rtpsize transport decryption, against packets sealed with PyNaCl."""

from __future__ import annotations

import struct

import pytest

from audio.rtp import Drop, RtpHeader, TransportCipher, build_packet, open_transport, parse_header
from tests.dave_group import TRANSPORT_KEY, seal

OPUS = b"\xfc\x01\x02\x03\x04\x05"


@pytest.mark.parametrize("ext_words", [None, 0, 1, 2])
@pytest.mark.parametrize("csrcs", [(), (7,), (7, 8, 9)])
def test_extension_and_csrcs_are_removed(ext_words: int | None, csrcs: tuple[int, ...]) -> None:
    packet = seal(OPUS, seq=65535, ts=123456, ssrc=42, ext_words=ext_words, csrcs=csrcs)
    result = open_transport(packet, TRANSPORT_KEY)
    assert not isinstance(result, Drop)
    header, frame = result
    assert frame == OPUS
    assert (header.sequence, header.timestamp, header.ssrc, header.csrc_count) == (65535, 123456, 42, len(csrcs))
    assert header.extension == (ext_words is not None)


@pytest.mark.parametrize("padding", [1, 2, 5, 31, 255])
def test_padding_is_stripped(padding: int) -> None:
    for ext in (None, 1):
        result = open_transport(seal(OPUS, padding=padding, ext_words=ext), TRANSPORT_KEY)
        assert not isinstance(result, Drop) and result[1] == OPUS


def test_all_padding_packet_is_dropped() -> None:
    assert open_transport(seal(b"", padding=4), TRANSPORT_KEY) is Drop.EMPTY
    assert open_transport(seal(b""), TRANSPORT_KEY) is Drop.EMPTY


@pytest.mark.parametrize("count", [0, 200])
def test_bad_padding_count_is_dropped(count: int) -> None:
    # P set, last plaintext byte is the (invalid) count: 0, or more than the payload holds
    import nacl.secret

    packet = seal(OPUS)
    header = bytes([packet[0] | 0x20]) + packet[1:12]

    tail = struct.pack(">I", 0)
    body = nacl.secret.Aead(TRANSPORT_KEY).encrypt(OPUS + bytes([count]), header, tail + bytes(20)).ciphertext
    assert open_transport(header + body + tail, TRANSPORT_KEY) is Drop.BAD_PADDING


def test_extension_longer_than_payload_is_dropped() -> None:
    packet = bytearray(seal(OPUS, ext_words=1))
    import nacl.secret

    header = bytes(packet[:12]) + struct.pack(">HH", 0xBEDE, 50)
    tail = struct.pack(">I", 9)
    body = nacl.secret.Aead(TRANSPORT_KEY).encrypt(b"\x00" * 8, header, tail + bytes(20)).ciphertext
    assert open_transport(header + body + tail, TRANSPORT_KEY) is Drop.BAD_EXTENSION


@pytest.mark.parametrize("pt", [101, 103, 0, 96, 127])
def test_other_payload_types_are_dropped(pt: int) -> None:
    assert parse_header(seal(OPUS, pt=pt)) is Drop.PAYLOAD_TYPE


@pytest.mark.parametrize("rtcp_type", [200, 201, 202, 203, 204])
def test_rtcp_is_dropped(rtcp_type: int) -> None:
    packet = struct.pack(">BBHI", 0x81, rtcp_type, 7, 42) + bytes(40)
    assert parse_header(packet) is Drop.RTCP


def test_own_ssrc_is_dropped() -> None:
    assert parse_header(seal(OPUS, ssrc=99), own_ssrc=99) is Drop.OWN_SSRC
    assert isinstance(parse_header(seal(OPUS, ssrc=99), own_ssrc=98), RtpHeader)


def test_not_rtp_v2_and_ip_discovery_are_dropped() -> None:
    discovery = struct.pack(">HHI", 2, 70, 5) + bytes(66)
    assert parse_header(discovery) is Drop.NOT_RTP
    packet = bytearray(seal(OPUS))
    packet[0] = (packet[0] & 0x3F) | 0x40  # version 1
    assert parse_header(bytes(packet)) is Drop.NOT_RTP


@pytest.mark.parametrize("length", [0, 1, 11, 12, 31])
def test_truncated_is_dropped(length: int) -> None:
    assert parse_header(seal(OPUS)[:length]) is Drop.TOO_SHORT


def test_truncated_with_extension_is_dropped() -> None:
    packet = seal(OPUS, ext_words=2, csrcs=(1, 2, 3))
    assert parse_header(packet[:40]) is Drop.TOO_SHORT


def test_wrong_key_and_tampering_are_dropped() -> None:
    packet = seal(OPUS)
    assert open_transport(packet, bytes(32)) is Drop.TRANSPORT_DECRYPT
    tampered = bytearray(packet)
    tampered[3] ^= 1  # header is AAD: changing the sequence breaks the tag
    assert open_transport(bytes(tampered), TRANSPORT_KEY) is Drop.TRANSPORT_DECRYPT
    tampered = bytearray(packet)
    tampered[-1] ^= 1  # nonce counter
    assert open_transport(bytes(tampered), TRANSPORT_KEY) is Drop.TRANSPORT_DECRYPT
    assert open_transport(packet, b"short") is Drop.NO_KEY


def test_build_packet_matches_pynacl_sealing() -> None:
    for kwargs in ({}, {"extension_body": b"\x10\xaa\x00\x00"}, {"padding": 3}, {"csrcs": (5,)}):
        packet = build_packet(OPUS, TRANSPORT_KEY, sequence=3, timestamp=4, ssrc=5, counter=6, **kwargs)
        result = open_transport(packet, TRANSPORT_KEY)
        assert not isinstance(result, Drop) and result[1] == OPUS
    assert build_packet(OPUS, TRANSPORT_KEY, sequence=1, timestamp=960, ssrc=5, counter=0) == seal(OPUS)


def test_cipher_repr_hides_key() -> None:
    assert "0001" not in repr(TransportCipher(TRANSPORT_KEY))
    with pytest.raises(ValueError):
        TransportCipher(b"x")
