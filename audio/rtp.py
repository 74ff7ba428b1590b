"""RTP parsing and Discord's transport decryption for received voice: a pure synchronous core.

Order per datagram (see research/discord-voice-receive.md §4): parse the header, filter, transport
decrypt (``aead_xchacha20_poly1305_rtpsize``), drop the encrypted header-extension body, strip RTP
padding. Nothing here raises for bad input: each function returns either its result or a
:class:`Drop` reason, so the socket thread never needs a try/except per step.
"""

from __future__ import annotations

import enum
import logging
import struct
from typing import NamedTuple

from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
from nacl.exceptions import CryptoError

try:
    # PyNaCl's own cffi binding to libsodium. Its Python wrapper validates arguments and formats
    # error strings on every call (~30 µs of a ~40 µs decrypt); the socket path calls libsodium
    # directly into a reused buffer and falls back to the public wrapper if this ever moves.
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _sodium
except ImportError:  # pragma: no cover - layout of a future PyNaCl
    _ffi = _sodium = None

__all__ = [
    "Drop",
    "RtpHeader",
    "TransportCipher",
    "SUPPORTED_MODE",
    "OPUS_PAYLOAD_TYPE",
    "OPUS_SILENCE",
    "parse_header",
    "open_transport",
    "build_packet",
]

log = logging.getLogger(__name__)

SUPPORTED_MODE = "aead_xchacha20_poly1305_rtpsize"
OPUS_PAYLOAD_TYPE = 120  # Discord's dynamic payload type for Opus audio; video/RTX use others (101, 103, ...)
OPUS_SILENCE = b"\xf8\xff\xfe"  # what Discord clients send around silence; passes through DAVE unchanged
FIXED_HEADER = 12
TAG_SIZE = 16  # Poly1305
NONCE_TAIL = 4  # rtpsize modes send only a 4-byte big-endian counter; the rest of the nonce is zero
KEY_SIZE = 32
_NONCE_PAD = bytes(20)
_RTCP_TYPES = range(200, 205)  # SR, RR, SDES, BYE, APP share the socket (RFC 5761 demultiplexing)
_SEQ_TS_SSRC = struct.Struct(">HII")


class Drop(enum.Enum):
    """Why a datagram was not turned into a frame. Values are stable counter names."""

    TOO_SHORT = "too_short"
    NOT_RTP = "not_rtp"
    RTCP = "rtcp"
    PAYLOAD_TYPE = "payload_type"
    OWN_SSRC = "own_ssrc"
    NO_KEY = "no_key"
    UNSUPPORTED_MODE = "unsupported_mode"
    TRANSPORT_DECRYPT = "transport_decrypt"
    BAD_EXTENSION = "bad_extension"
    BAD_PADDING = "bad_padding"
    EMPTY = "empty"


class RtpHeader(NamedTuple):
    """The fields of an RTP header (RFC 3550 §5.1) plus where the payload starts.

    A NamedTuple rather than a frozen dataclass: it is built for every datagram on the socket
    thread, and a frozen dataclass's ``__init__`` costs several times more.
    """

    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    header_length: int  # 12 + 4·CC (+ 4 for the extension preamble, which rtpsize leaves unencrypted)
    extension_words: int  # length of the (encrypted) extension body in 32-bit words


def parse_header(packet: bytes, own_ssrc: int | None = None) -> RtpHeader | Drop:
    """Parse and filter one datagram: keep only RTP v2 Opus (PT 120) from someone else.

    ``own_ssrc`` is the connection's SSRC; Discord does not echo it, but a stray copy must never be
    attributed to a speaker.
    """
    n = len(packet)
    if n < FIXED_HEADER:
        return Drop.TOO_SHORT
    b0 = packet[0]
    if b0 >> 6 != 2:
        return Drop.NOT_RTP  # includes the 74-byte IP discovery replies (version bits 0)
    b1 = packet[1]
    if b1 in _RTCP_TYPES:
        return Drop.RTCP
    pt = b1 & 0x7F
    if pt != OPUS_PAYLOAD_TYPE:
        return Drop.PAYLOAD_TYPE
    cc = b0 & 0x0F
    has_ext = bool(b0 & 0x10)
    hlen = FIXED_HEADER + 4 * cc + (4 if has_ext else 0)
    if n < hlen + TAG_SIZE + NONCE_TAIL:
        return Drop.TOO_SHORT
    seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
    if own_ssrc is not None and ssrc == own_ssrc:
        return Drop.OWN_SSRC
    ext_words = 0
    if has_ext:
        # RFC 8285 one-byte-header preamble 0xBEDE | u16 length in words; only the body is encrypted
        ext_words = (packet[hlen - 2] << 8) | packet[hlen - 1]
    return RtpHeader(bool(b0 & 0x20), has_ext, cc, bool(b1 & 0x80), pt, seq, ts, ssrc, hlen, ext_words)


_MAX_DATAGRAM = 2048  # discord.py's SocketReader reads at most this much per datagram


class TransportCipher:
    """``aead_xchacha20_poly1305_rtpsize`` for one session key (op 4 ``secret_key``).

    Build one per key and reuse it: the receive path compares keys by identity of the source list
    and rebuilds only when op 4 replaces it. Not thread-safe (it decrypts into a reused buffer):
    one instance per receiver, used under the receiver's lock.
    """

    __slots__ = ("_key", "_out", "_outlen")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"transport key must be {KEY_SIZE} bytes")
        self._key = bytes(key)
        if _ffi is not None:
            self._out = _ffi.new("unsigned char[]", _MAX_DATAGRAM)
            self._outlen = _ffi.new("unsigned long long *")
        else:  # pragma: no cover
            self._out = self._outlen = None

    def _decrypt(self, ct: bytes, aad: bytes, nonce: bytes) -> bytes | None:
        out = self._out
        if out is not None and len(ct) <= _MAX_DATAGRAM:
            res = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                out, self._outlen, _ffi.NULL, ct, len(ct), aad, len(aad), nonce, self._key
            )
            if res != 0:
                return None
            return _ffi.buffer(out, self._outlen[0])[:]
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(ct, aad, nonce, self._key)
        except (CryptoError, ValueError, TypeError):
            return None

    def __repr__(self) -> str:
        return "TransportCipher(<key hidden>)"

    def open(self, packet: bytes, header: RtpHeader) -> bytes | Drop:
        """Decrypt the payload and return the bare codec frame (extension body and padding removed)."""
        hlen = header.header_length
        # AAD is the whole unencrypted header (fixed part, CSRCs, extension preamble); the nonce is
        # the trailing 4-byte counter followed by 20 zero bytes.
        ct = packet[hlen:-NONCE_TAIL]
        if len(ct) < TAG_SIZE:
            return Drop.TOO_SHORT
        body = self._decrypt(ct, packet[:hlen], packet[-NONCE_TAIL:] + _NONCE_PAD)
        if body is None:
            return Drop.TRANSPORT_DECRYPT
        if header.extension_words:
            skip = 4 * header.extension_words
            if skip > len(body):
                return Drop.BAD_EXTENSION
            body = body[skip:]
        if header.padding:
            # The padding count is the last byte and counts itself; it sits inside the encryption.
            if not body:
                return Drop.BAD_PADDING
            count = body[-1]
            if count == 0 or count > len(body):
                return Drop.BAD_PADDING
            body = body[:-count]
        if not body:
            return Drop.EMPTY
        return body


def open_transport(packet: bytes, key: bytes, own_ssrc: int | None = None) -> tuple[RtpHeader, bytes] | Drop:
    """Parse, filter and decrypt one datagram with ``key``; convenience for one-off use and tests."""
    header = parse_header(packet, own_ssrc)
    if type(header) is Drop:
        return header
    try:
        cipher = TransportCipher(key)
    except ValueError:
        return Drop.NO_KEY
    frame = cipher.open(packet, header)
    if isinstance(frame, Drop):
        return frame
    return header, frame


def build_packet(
    payload: bytes,
    key: bytes,
    *,
    sequence: int,
    timestamp: int,
    ssrc: int,
    counter: int,
    payload_type: int = OPUS_PAYLOAD_TYPE,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension_body: bytes | None = None,
    padding: int = 0,
) -> bytes:
    """Build and encrypt a datagram as a Discord client sends it (tests, benchmark, loopback).

    ``extension_body`` must be a multiple of 4 bytes; ``padding`` bytes (count included) are
    appended inside the encryption as RFC 3550 specifies.
    """
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    if extension_body is not None and len(extension_body) % 4:
        raise ValueError("extension body must be whole 32-bit words")
    if not 0 <= padding <= 255:
        raise ValueError("padding must be 0..255 bytes")
    b0 = 0x80 | len(csrcs) | (0x10 if extension_body is not None else 0) | (0x20 if padding else 0)
    b1 = (0x80 if marker else 0) | payload_type
    header = struct.pack(">BBHII", b0, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    header += b"".join(struct.pack(">I", c) for c in csrcs)
    plaintext = payload
    if extension_body is not None:
        header += struct.pack(">HH", 0xBEDE, len(extension_body) // 4)
        plaintext = extension_body + plaintext
    if padding:
        plaintext += bytes(padding - 1) + bytes([padding])
    tail = struct.pack(">I", counter & 0xFFFFFFFF)
    return header + crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, header, tail + _NONCE_PAD, key) + tail
