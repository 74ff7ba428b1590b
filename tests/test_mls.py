"""The loopback MLS external sender drives real davey sessions through joins, leaves and revokes."""

from __future__ import annotations

import struct

import davey
import pytest

from bot.loopback.mls import (
    ExternalSender,
    MLSDecodeError,
    add_member,
    encode_varint,
    establish_group,
    proposal_ref,
    proposals_op_payload,
    read_varint,
    read_vec,
    remove_member,
    split_commit_welcome,
    vec,
)

CHANNEL = 4242
OPUS = b"\xfc" + bytes(range(40))


def _session(user_id: int) -> davey.DaveSession:
    return davey.DaveSession(1, user_id, CHANNEL)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 16383, 16384, 2**30 - 1])
def test_varint_round_trip(n: int) -> None:
    encoded = encode_varint(n)
    assert len(encoded) == (1 if n < 64 else 2 if n < 16384 else 4)
    assert read_varint(encoded, 0) == (n, len(encoded))


def test_varint_rejects_too_long_and_truncated() -> None:
    with pytest.raises(ValueError):
        encode_varint(2**30)
    with pytest.raises(MLSDecodeError):
        read_vec(b"\x05abc", 0)
    with pytest.raises(MLSDecodeError):
        read_varint(b"\xc0", 0)


def test_external_sender_payload_layout() -> None:
    sender = ExternalSender()
    payload = sender.payload()
    key, pos = read_vec(payload, 0)
    assert key == sender.public_key and len(key) == 65 and key[0] == 4
    assert struct.unpack_from(">H", payload, pos)[0] == 1  # basic credential
    identity, end = read_vec(payload, pos + 2)
    assert identity == b"\x00" and end == len(payload)
    assert "EllipticCurve" not in repr(sender)


def test_two_member_group_encrypts_across() -> None:
    sender = ExternalSender()
    a, b = _session(1), _session(2)
    establish_group(sender, a, b, CHANNEL)
    assert a.ready and b.ready
    assert a.voice_privacy_code == b.voice_privacy_code
    assert sorted(a.get_user_ids()) == ["1", "2"]
    assert b.decrypt(1, davey.MediaType.audio, a.encrypt_opus(OPUS)) == OPUS


def test_third_member_added_then_removed() -> None:
    sender = ExternalSender()
    a, b, c = _session(1), _session(2), _session(3)
    establish_group(sender, a, b, CHANNEL)
    add_member(sender, a, [b], c, CHANNEL)
    assert a.epoch == b.epoch == c.epoch == 2
    assert b.decrypt(3, davey.MediaType.audio, c.encrypt_opus(OPUS)) == OPUS
    leaf_b = b.own_leaf_index
    assert leaf_b is not None
    result = remove_member(sender, a, [c], leaf_b, CHANNEL)
    assert result.welcome is None
    assert sorted(a.get_user_ids()) == sorted(c.get_user_ids()) == ["1", "3"]
    with pytest.raises(ValueError, match="NoDecryptorForUser"):
        a.decrypt(2, davey.MediaType.audio, b.encrypt_opus(OPUS))
    assert a.decrypt(3, davey.MediaType.audio, c.encrypt_opus(OPUS)) == OPUS


def test_revoke_withdraws_a_pending_proposal() -> None:
    sender = ExternalSender()
    a, b, c = _session(1), _session(2), _session(3)
    establish_group(sender, a, b, CHANNEL)
    c.set_external_sender(sender.payload())
    proposal = sender.add_proposal(c.get_serialized_key_package(), CHANNEL, a.epoch)
    append = proposals_op_payload([proposal])
    assert append[0] == 0
    assert a.process_proposals(davey.ProposalsOperationType.append, append[1:]) is not None
    revoke = proposals_op_payload([proposal_ref(proposal)], revoke=True)
    assert revoke[0] == 1
    # nothing left to commit once the only proposal is revoked
    assert a.process_proposals(davey.ProposalsOperationType.revoke, revoke[1:]) is None


def test_proposal_signed_by_another_key_is_rejected() -> None:
    sender, impostor = ExternalSender(), ExternalSender()
    a, b = _session(1), _session(2)
    a.set_external_sender(sender.payload())
    b.set_external_sender(sender.payload())
    forged = impostor.add_proposal(b.get_serialized_key_package(), CHANNEL, 0)
    with pytest.raises(ValueError):
        a.process_proposals(davey.ProposalsOperationType.append, proposals_op_payload([forged])[1:])


def test_split_commit_welcome() -> None:
    sender = ExternalSender()
    a, b, c = _session(1), _session(2), _session(3)
    establish_group(sender, a, b, CHANNEL)
    result = add_member(sender, a, [b], c, CHANNEL)
    assert result.welcome is not None
    assert split_commit_welcome(result.commit + result.welcome) == (result.commit, result.welcome)
    assert split_commit_welcome(result.commit) == (result.commit, None)
    with pytest.raises(MLSDecodeError):
        split_commit_welcome(b"\x00\x02" + vec(b"x"))
    with pytest.raises(ValueError):
        proposal_ref(b"garbage")
