"""The DAVE voice gateway's MLS external sender, for loopback servers and tests.

Discord's voice gateway is not an MLS member: it is the group's *external sender* (RFC 9420 §12.1.8.1).
It announces its signing key in op 25, and it proposes membership changes (op 27) as MLS
``PublicMessage`` proposals signed with that key; members commit them (op 28) and the gateway
relays the winning commit (op 29) and the welcome (op 30). This module builds exactly those bytes
so a loopback voice gateway can drive real ``davey`` sessions (discord.py's and fake participants').

Wire facts used here (RFC 9420, DAVE protocol whitepaper):
- variable-length vectors carry a QUIC-style varint length (1, 2 or 4 bytes, top two bits = size);
- DAVE uses ciphersuite 2 (P-256, SHA-256, ECDSA with DER signatures);
- a proposal from an external sender is ``FramedContent`` with sender type 2 and the sender's index
  in the group's ``external_senders`` extension (always 0 here: there is one gateway), signed over
  ``FramedContentTBS`` (no group context for external senders), with no membership tag.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

if TYPE_CHECKING:
    import davey

__all__ = [
    "MLSDecodeError",
    "ExternalSender",
    "encode_varint",
    "vec",
    "read_vec",
    "proposals_op_payload",
    "proposal_ref",
    "split_commit_welcome",
    "group_id_for",
    "commit_pending_proposals",
    "establish_group",
    "add_member",
    "remove_member",
]

log = logging.getLogger(__name__)

MLS10 = 1
WIRE_PUBLIC_MESSAGE = 1
WIRE_WELCOME = 3
SENDER_EXTERNAL = 2
CONTENT_PROPOSAL = 2
PROPOSAL_ADD = 1
PROPOSAL_REMOVE = 3
CREDENTIAL_BASIC = 1
OPTYPE_APPEND = 0
OPTYPE_REVOKE = 1


class MLSDecodeError(ValueError):
    """Bytes that do not parse as the MLS structure expected."""


def encode_varint(n: int) -> bytes:
    """RFC 9420 §2.1.2 variable-length integer (lengths of vectors)."""
    if n < 0x40:
        return bytes([n])
    if n < 0x4000:
        return struct.pack(">H", n | 0x4000)
    if n < 0x40000000:
        return struct.pack(">I", n | 0x80000000)
    raise ValueError(f"MLS vector too long: {n} bytes")


def vec(data: bytes) -> bytes:
    """An MLS ``opaque<V>``: varint length then the bytes."""
    return encode_varint(len(data)) + data


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; return (value, position after it)."""
    if pos >= len(buf):
        raise MLSDecodeError("truncated varint")
    prefix = buf[pos] >> 6
    if prefix == 0:
        return buf[pos] & 0x3F, pos + 1
    if prefix == 1:
        if pos + 2 > len(buf):
            raise MLSDecodeError("truncated varint")
        return struct.unpack_from(">H", buf, pos)[0] & 0x3FFF, pos + 2
    if prefix == 2:
        if pos + 4 > len(buf):
            raise MLSDecodeError("truncated varint")
        return struct.unpack_from(">I", buf, pos)[0] & 0x3FFFFFFF, pos + 4
    raise MLSDecodeError("invalid varint prefix")


def read_vec(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Decode an ``opaque<V>`` at ``pos``; return (body, position after it)."""
    length, pos = read_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MLSDecodeError("truncated vector")
    return buf[pos:end], end


def group_id_for(channel_id: int) -> bytes:
    """DAVE's MLS group id: the channel id as a big-endian u64."""
    return struct.pack(">Q", channel_id)


@dataclass(frozen=True)
class _Signed:
    message: bytes  # the MLSMessage (PublicMessage) bytes
    authenticated_content: bytes  # wire_format | FramedContent | FramedContentAuthData


class ExternalSender:
    """The voice gateway's MLS external sender: a P-256 signing key and its credential.

    ``payload()`` is the op 25 body; ``add_proposal``/``remove_proposal`` build the proposals that
    go in an op 27 body (wrap them with :func:`proposals_op_payload`).
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None, identity: bytes = b"\x00") -> None:
        self._key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        if not isinstance(self._key.curve, ec.SECP256R1):
            raise ValueError("DAVE ciphersuite 2 needs a P-256 key")
        self._identity = identity

    def __repr__(self) -> str:
        return f"ExternalSender(identity={self._identity!r})"

    @property
    def public_key(self) -> bytes:
        """The uncompressed SEC1 point, as MLS carries a P-256 signature key."""
        return self._key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def payload(self) -> bytes:
        """The op 25 body: MLS ``ExternalSender`` = signature_key<V> | Credential(basic, identity<V>)."""
        return vec(self.public_key) + struct.pack(">H", CREDENTIAL_BASIC) + vec(self._identity)

    def _sign_proposal(self, proposal: bytes, channel_id: int, epoch: int) -> _Signed:
        head = struct.pack(">HH", MLS10, WIRE_PUBLIC_MESSAGE)
        content = (
            vec(group_id_for(channel_id))
            + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0)  # sender_index 0: the only external sender
            + vec(b"")  # authenticated_data
            + bytes([CONTENT_PROPOSAL])
            + proposal
        )
        # SignWithLabel: sign SignContent{label<V> = "MLS 1.0 " + label, content<V> = FramedContentTBS}
        tbs = vec(b"MLS 1.0 FramedContentTBS") + vec(head + content)
        signature = self._key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        auth = vec(signature)  # proposals carry no confirmation tag; external senders no membership tag
        return _Signed(head + content + auth, struct.pack(">H", WIRE_PUBLIC_MESSAGE) + content + auth)

    def add_proposal(self, key_package: bytes, channel_id: int, epoch: int) -> bytes:
        """An Add proposal for ``key_package`` (the joiner's op 26 body) in the group's ``epoch``."""
        return self._sign_proposal(struct.pack(">H", PROPOSAL_ADD) + key_package, channel_id, epoch).message

    def remove_proposal(self, leaf_index: int, channel_id: int, epoch: int) -> bytes:
        """A Remove proposal for the member at ``leaf_index`` in the group's ``epoch``."""
        return self._sign_proposal(struct.pack(">HI", PROPOSAL_REMOVE, leaf_index), channel_id, epoch).message


def proposal_ref(message: bytes) -> bytes:
    """The ProposalRef of a PublicMessage proposal (what op 27 *revoke* lists).

    RFC 9420 §5.2: RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent), where
    AuthenticatedContent is the message without its 2-byte protocol version (and, for member
    senders, without the membership tag; external senders have none).
    """
    if len(message) < 4 or struct.unpack_from(">HH", message, 0) != (MLS10, WIRE_PUBLIC_MESSAGE):
        raise MLSDecodeError("not an MLS 1.0 PublicMessage")
    ref_input = vec(b"MLS 1.0 Proposal Reference") + vec(message[2:])
    return hashlib.sha256(ref_input).digest()


def proposals_op_payload(proposals: Iterable[bytes], revoke: bool = False) -> bytes:
    """The op 27 body: u8 operation type, then a vector of MLSMessages (append) or ProposalRefs (revoke).

    For ``revoke=True`` pass the refs themselves (see :func:`proposal_ref`); each is a vector.
    """
    if revoke:
        body = b"".join(vec(ref) for ref in proposals)
        return bytes([OPTYPE_REVOKE]) + vec(body)
    return bytes([OPTYPE_APPEND]) + vec(b"".join(proposals))


DAVE_CIPHERSUITE = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256


def _is_welcome_at(data: bytes, pos: int) -> bool:
    # DAVE appends the Welcome *unframed* (no MLSMessage version/wire format):
    # u16 cipher_suite | EncryptedGroupSecrets secrets<V> | opaque encrypted_group_info<V>,
    # each secret = KeyPackageRef new_member<V> (32 bytes for SHA-256) | HPKECiphertext{kem_output<V>, ciphertext<V>}.
    if data[pos : pos + 2] != struct.pack(">H", DAVE_CIPHERSUITE):
        return False
    try:
        secrets, p = read_vec(data, pos + 2)
        _, p = read_vec(data, p)
        if p != len(data) or not secrets:
            return False
        q = 0
        while q < len(secrets):
            ref, q = read_vec(secrets, q)
            if len(ref) != 32:
                return False
            _, q = read_vec(secrets, q)
            _, q = read_vec(secrets, q)
    except MLSDecodeError:
        return False
    return True


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Split an op 28 body (``commit | welcome?``, concatenated by the client) into its parts.

    The commit is an MLSMessage (PublicMessage); the welcome, when present, is an unframed MLS
    ``Welcome`` that must parse exactly to the end of the data, which is how it is found.
    """
    if len(data) < 4 or struct.unpack_from(">HH", data, 0) != (MLS10, WIRE_PUBLIC_MESSAGE):
        raise MLSDecodeError("op 28 does not start with an MLS PublicMessage commit")
    marker = struct.pack(">H", DAVE_CIPHERSUITE)
    pos = data.find(marker, 4)
    while pos != -1:
        if _is_welcome_at(data, pos):
            return data[:pos], data[pos:]
        pos = data.find(marker, pos + 1)
    return data, None


# --- helpers driving davey sessions (tests, loopback participants) ---------------------------------


def commit_pending_proposals(
    committer: davey.DaveSession,
    others: Sequence[davey.DaveSession],
    proposals: Sequence[bytes],
) -> davey.CommitWelcome:
    """Deliver ``proposals`` to every member (op 27), take ``committer``'s commit as the winner and
    have every member apply it (op 29), as the voice gateway does.

    Members must have seen the proposals before the commit that references them, or davey rejects
    the commit with ``MissingProposal``.
    """
    import davey

    # davey takes the op 27 body after its optype byte (discord.py passes msg[4:])
    body = proposals_op_payload(proposals)[1:]
    result = committer.process_proposals(davey.ProposalsOperationType.append, body)
    if result is None:
        raise RuntimeError("process_proposals produced no commit")
    for member in others:
        member.process_proposals(davey.ProposalsOperationType.append, body)
    committer.process_commit(result.commit)
    for member in others:
        member.process_commit(result.commit)
    return result


def establish_group(
    sender: ExternalSender, creator: davey.DaveSession, joiner: davey.DaveSession, channel_id: int
) -> None:
    """Build a two-member DAVE group: ``creator`` commits an Add of ``joiner``, who takes the welcome.

    Both sessions get the external sender first (op 25). Afterwards both are ``ready``.
    """
    payload = sender.payload()
    creator.set_external_sender(payload)
    joiner.set_external_sender(payload)
    kp = joiner.get_serialized_key_package()
    epoch = creator.epoch or 0
    result = commit_pending_proposals(creator, [], [sender.add_proposal(kp, channel_id, epoch)])
    if result.welcome is None:
        raise RuntimeError("commit adding a member carried no welcome")
    joiner.process_welcome(result.welcome)


def add_member(
    sender: ExternalSender,
    committer: davey.DaveSession,
    others: Sequence[davey.DaveSession],
    joiner: davey.DaveSession,
    channel_id: int,
    key_package: bytes | None = None,
) -> davey.CommitWelcome:
    """Add ``joiner`` to an existing group: ``committer`` commits, ``others`` process the commit.

    Pass ``key_package`` when the joiner's key package was already produced (e.g. sent as op 26):
    davey keeps only the latest one, so asking again would invalidate the one in flight.
    """
    joiner.set_external_sender(sender.payload())
    kp = key_package if key_package is not None else joiner.get_serialized_key_package()
    epoch = committer.epoch
    if epoch is None:
        raise RuntimeError("committer has no group")
    result = commit_pending_proposals(committer, others, [sender.add_proposal(kp, channel_id, epoch)])
    if result.welcome is None:
        raise RuntimeError("commit adding a member carried no welcome")
    joiner.process_welcome(result.welcome)
    return result


def remove_member(
    sender: ExternalSender,
    committer: davey.DaveSession,
    others: Sequence[davey.DaveSession],
    leaf_index: int,
    channel_id: int,
) -> davey.CommitWelcome:
    """Remove the member at ``leaf_index``: ``committer`` commits, ``others`` process the commit."""
    epoch = committer.epoch
    if epoch is None:
        raise RuntimeError("committer has no group")
    return commit_pending_proposals(committer, others, [sender.remove_proposal(leaf_index, channel_id, epoch)])
