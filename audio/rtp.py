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
from typing import Any, NamedTuple

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
    "parse_fields",
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
_FIXED = struct.Struct(">BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC


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
    fields = parse_fields(packet, own_ssrc)
    if type(fields) is Drop:
        return fields
    seq, ts, ssrc, hlen, ext_words, padding = fields  # type: ignore[misc]
    b0, b1 = packet[0], packet[1]
    return RtpHeader(padding, bool(b0 & 0x10), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, hlen, ext_words)


def parse_fields(packet: bytes, own_ssrc: int | None = None) -> tuple[int, int, int, int, int, bool] | Drop:
    """:func:`parse_header` for the socket thread: ``(sequence, timestamp, ssrc, header_length,
    extension_words, padding)`` as a plain tuple (an RtpHeader per datagram costs more than the parse)."""
    n = len(packet)
    if n < FIXED_HEADER:
        return Drop.TOO_SHORT
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(packet)
    if b0 >> 6 != 2:
        return Drop.NOT_RTP  # includes the 74-byte IP discovery replies (version bits 0)
    if b1 in _RTCP_TYPES:
        return Drop.RTCP
    if b1 & 0x7F != OPUS_PAYLOAD_TYPE:
        return Drop.PAYLOAD_TYPE
    has_ext = b0 & 0x10
    hlen = FIXED_HEADER + 4 * (b0 & 0x0F) + (4 if has_ext else 0)
    if n < hlen + TAG_SIZE + NONCE_TAIL:
        return Drop.TOO_SHORT
    if own_ssrc is not None and ssrc == own_ssrc:
        return Drop.OWN_SSRC
    # RFC 8285 one-byte-header preamble 0xBEDE | u16 length in words; only the body is encrypted
    ext_words = ((packet[hlen - 2] << 8) | packet[hlen - 1]) if has_ext else 0
    return seq, ts, ssrc, hlen, ext_words, b0 & 0x20 != 0


_MAX_DATAGRAM = 2048  # discord.py's SocketReader reads at most this much per datagram


class TransportCipher:
    """``aead_xchacha20_poly1305_rtpsize`` for one session key (op 4 ``secret_key``).

    Build one per key and reuse it: the receive path compares keys by identity of the source list
    and rebuilds only when op 4 replaces it. Not thread-safe (it decrypts into a reused buffer):
    one instance per receiver, used under the receiver's lock.
    """

    __slots__ = ("_key", "_out", "_outlen", "_out_bytes")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"transport key must be {KEY_SIZE} bytes")
        self._key = bytes(key)
        if _ffi is not None:
            self._out = _ffi.new("unsigned char[]", _MAX_DATAGRAM)
            self._outlen = _ffi.new("unsigned long long *")
            self._out_bytes = _ffi.buffer(self._out)  # slicing it copies out just the frame, as bytes
        else:  # pragma: no cover
            self._out = self._outlen = self._out_bytes = None

    def __repr__(self) -> str:
        return "TransportCipher(<key hidden>)"

    def open(self, packet: bytes, header: RtpHeader) -> bytes | Drop:
        """Decrypt the payload and return the bare codec frame (extension body and padding removed)."""
        return self.open_parts(packet, header.header_length, header.extension_words, header.padding)

    def open_parts(self, packet: bytes, hlen: int, extension_words: int, padding: bool) -> bytes | Drop:
        """:meth:`open` from the fields :func:`parse_fields` returns."""
        # AAD is the whole unencrypted header (fixed part, CSRCs, extension preamble); the nonce is
        # the trailing 4-byte counter followed by 20 zero bytes.
        ct = packet[hlen:-NONCE_TAIL]
        clen = len(ct)
        if clen < TAG_SIZE:
            return Drop.TOO_SHORT
        nonce = packet[-NONCE_TAIL:] + _NONCE_PAD
        out = self._out
        if out is not None and clen <= _MAX_DATAGRAM:
            if _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                out, self._outlen, _ffi.NULL, ct, clen, packet[:hlen], hlen, nonce, self._key
            ):
                return Drop.TRANSPORT_DECRYPT
            plain: Any = self._out_bytes
            last: Any = out  # indexing the cdata array gives an int (the buffer gives bytes)
            end = self._outlen[0]
        else:
            try:
                plain = crypto_aead_xchacha20poly1305_ietf_decrypt(ct, packet[:hlen], nonce, self._key)
            except (CryptoError, ValueError, TypeError):
                return Drop.TRANSPORT_DECRYPT
            end = len(plain)
            last = plain
        # The body is plain[start:end]: slice once, at the end (each slice of bytes is a copy).
        start = 4 * extension_words
        if start > end:
            return Drop.BAD_EXTENSION
        if padding:
            # The padding count is the last byte and counts itself; it sits inside the encryption.
            if end == start:
                return Drop.BAD_PADDING
            count = last[end - 1]
            if count == 0 or count > end - start:
                return Drop.BAD_PADDING
            end -= count
        if end == start:
            return Drop.EMPTY
        return plain[start:end]  # type: ignore[no-any-return]


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
