"""Ids that reach subjects and document ids are validated; bots keep their `.bot` suffix."""

from __future__ import annotations

import pytest

from schemas.names import identifier_problem, is_valid_account, is_valid_room_id


@pytest.mark.parametrize(
    ("account", "valid"),
    [("alice", True), ("helper.bot", True), ("p_helper", True), ("a.b", False), ("a*", False), ("a>b", False), ("a b", False), ("", False), (".bot", False), ("x.bot.bot", False)],
)
def test_accounts(account: str, valid: bool) -> None:
    assert is_valid_account(account) is valid


@pytest.mark.parametrize(("room_id", "valid"), [("r-eng", True), ("u-aliceu-bob", True), ("r.eng", False), ("r*", False), ("r >", False), ("", False)])
def test_room_ids(room_id: str, valid: bool) -> None:
    assert is_valid_room_id(room_id) is valid


def test_identifier_problem_names_the_first_bad_id() -> None:
    assert identifier_problem(room_ids=["r1"], accounts=["alice", "b ob"]) is not None
    assert "'b ob'" in (identifier_problem(room_ids=["r1"], accounts=["alice", "b ob"]) or "")
    assert identifier_problem(room_ids=["r1"], accounts=["alice", "helper.bot"]) is None
