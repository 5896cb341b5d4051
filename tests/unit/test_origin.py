"""The aggregate lane only accepts what the claimed origin's OUTBOX really sent."""

from __future__ import annotations

import pytest

from schemas.origin import origin_problem, sourced_from

CROSS_DOMAIN = "OUTBOX_s1:7GOAUEZh 12 outbox.s1.to.s2.> chat.inbox.s2.aggregate.> outbox.s1.to.s2.member_added 6NXfE8fj"
SAME_SERVER = "OUTBOX_s3 4 outbox.s3.to.s2.> chat.inbox.s2.aggregate.> outbox.s3.to.s2.member_added"
# bound to the origin's durable (issue 14): the source's name gains `:C=<hash of the durable>`
DURABLE_CROSS_DOMAIN = "OUTBOX_s1:7GOAUEZh:C=I4gLcu7y 24917 outbox.s1.to.s2.> chat.inbox.s2.aggregate.> outbox.s1.to.s2.member_added Lbg1XZJT"
DURABLE_SAME_SERVER = "OUTBOX_s3:C=I4gLcu7y 4 outbox.s3.to.s2.> chat.inbox.s2.aggregate.> outbox.s3.to.s2.member_added UpfI05bF"


@pytest.mark.parametrize(
    ("header", "origin"),
    [
        (CROSS_DOMAIN, "s1"),
        (SAME_SERVER, "s3"),
        (DURABLE_CROSS_DOMAIN, "s1"),
        (DURABLE_SAME_SERVER, "s3"),
        ("ROOMS_s1 1 x y z", None),
        ("ROOMS_s1:C=x 1 x y z", None),
        ("OUTBOX_", None),
        ("", None),
    ],
    ids=["cross-domain", "same-server", "durable-cross-domain", "durable-same-server", "not-an-outbox", "durable-not-outbox", "no-site", "empty"],
)
def test_sourced_from_reads_the_origin_stream(header: str, origin: str | None) -> None:
    assert sourced_from({"Nats-Stream-Source": header} if header else None) == origin


@pytest.mark.parametrize(
    ("headers", "envelope_site", "room_site", "problem"),
    [
        ({"Nats-Stream-Source": CROSS_DOMAIN}, "s1", "s1", None),
        ({"Nats-Stream-Source": CROSS_DOMAIN}, "s1", None, None),
        ({"Nats-Stream-Source": SAME_SERVER}, "s1", "s1", "origin mismatch"),
        ({"Nats-Stream-Source": CROSS_DOMAIN}, "s1", "s9", "homed on 's9'"),
        ({}, "s1", "s1", "origin unproven"),
        (None, "s1", "s1", "origin unproven"),
    ],
    ids=["proven", "no-inner-site", "claims-another-site", "foreign-room", "no-header", "no-headers"],
)
def test_origin_problem(headers: dict[str, str] | None, envelope_site: str, room_site: str | None, problem: str | None) -> None:
    found = origin_problem(headers, envelope_site=envelope_site, room_site=room_site)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_replayed_dead_letter_keeps_its_proven_origin() -> None:
    assert sourced_from({"Chatfed-Replayed-Stream-Source": CROSS_DOMAIN}) == "s1"
