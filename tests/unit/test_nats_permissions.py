"""The NATS permissions (scripts/localservers/permissions.py) let each site's users do what the flows do, and no more.

Subjects are built with the same builders the flows and the stream configs use, so a change of the subject
layout that the permissions did not follow fails here, not as a permissions hole or a refused publish.
"""

from __future__ import annotations

import pytest

from schemas import names, streams, subjects
from schemas.envelope import EventType
from schemas.subjects import RoomOp
from scripts.localservers.permissions import Permissions, nats_leaf_permissions, nats_service_permissions

SITE, OTHER, THIRD = "s1", "s2", "s3"
SITES = (SITE, OTHER, THIRD)
EVENT_TYPES = [t.value for t in EventType]


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a final `>` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


def allowed(permissions: Permissions, direction: str, subject: str) -> bool:
    return any(matches(pattern, subject) for pattern in permissions[direction]["allow"])


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.x.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.b", "a.b.c", False),
        ("$JS.ACK.INBOX_s1.>", "$JS.ACK.INBOX_s1.search-sync.1.2.3.4.0", True),
    ],
)
def test_matcher(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


def _site_publishes(site: str, other: str) -> list[str]:
    """Every subject the flows (and a site-local API) of `site` publish to, built with the schemas' builders."""
    out = [subjects.rooms_command(site, op) for op in RoomOp]
    out += [subjects.inbox_local(site, t) for t in EVENT_TYPES]
    out += [subjects.outbox(origin=site, dest=other, event_type=t) for t in EVENT_TYPES]
    out += [subjects.dlq(site, flow) for flow in names.FLOWS]
    out += [subjects.command_result(account="alice", request_id="0195f0a2-7c1d"), f"{subjects.RELEASE_PREFIX}0a1b2c"]
    out += [subjects.subscription_update("alice")]
    for spec in streams.site_consumers(site):
        out += [
            f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}",
            f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.durable}",
            f"$JS.ACK.{spec.stream}.{spec.durable}.1.7.7.1700000000000000000.0",
            f"$JS.ACK.{site}.ACCOUNTHASH.{spec.stream}.{spec.durable}.1.7.7.1700000000000000000.0.token",
        ]
    return out


def test_service_user_may_publish_what_its_flows_publish() -> None:
    permissions = nats_service_permissions(SITE)
    refused = [s for s in _site_publishes(SITE, OTHER) if not allowed(permissions, "publish", s)]
    assert refused == []
    assert allowed(permissions, "subscribe", "_INBOX.a1b2c3.1")


def test_service_user_may_not_touch_another_site() -> None:
    permissions = nats_service_permissions(SITE)
    # results and release notices name no site: the same subjects for every site
    site_free = {
        subjects.command_result(account="alice", request_id="0195f0a2-7c1d"), f"{subjects.RELEASE_PREFIX}0a1b2c", subjects.subscription_update("alice")
    }
    leaks = [s for s in _site_publishes(OTHER, SITE) if s not in site_free and allowed(permissions, "publish", s)]
    assert leaks == []


@pytest.mark.parametrize(
    "subject",
    [
        *(subjects.inbox_aggregate(SITE, t) for t in EVENT_TYPES),  # only sourcing writes the federated lane
        subjects.outbox(origin=OTHER, dest=SITE, event_type="member_added"),
        f"$JS.API.STREAM.DELETE.{names.inbox_stream(SITE)}",
        f"$JS.API.STREAM.PURGE.{names.rooms_stream(SITE)}",
        f"$JS.API.CONSUMER.DELETE.{names.inbox_stream(SITE)}.{names.SEARCH_SYNC_DURABLE}",
        f"$JS.API.CONSUMER.CREATE.{names.inbox_stream(SITE)}.x",
        f"$JS.API.CONSUMER.MSG.NEXT.{names.outbox_stream(SITE)}.x",
        f"$JS.API.CONSUMER.MSG.NEXT.{names.dlq_stream(SITE)}.x",
        f"{subjects.jetstream_api_prefix(SITE)}.STREAM.INFO.{names.outbox_stream(SITE)}",
        "$SYS.REQ.SERVER.PING",
    ],
)
def test_service_user_may_not_manage_streams_or_forge_sourced_events(subject: str) -> None:
    assert not allowed(nats_service_permissions(SITE), "publish", subject)


def test_service_user_subscribes_to_reply_inboxes_only() -> None:
    permissions = nats_service_permissions(SITE)
    assert not any(allowed(permissions, "subscribe", s) for s in [subjects.inbox_local(SITE, "member_added"), "chat.user.alice.response.q", ">"])


def _bind_source(spec: streams.SourceSpec) -> str:
    """What `INBOX_{dest}` asks of the origin's JetStream to source it: a reset of the durable the origin keeps for it."""
    return f"{spec.external_api_prefix}.CONSUMER.RESET.{spec.name}.{spec.durable}"


def test_leafnode_carries_exactly_the_sourcing_of_the_stream_configs() -> None:
    """What site_streams configures as INBOX sources is what the leaf permissions let through, both ways."""
    for dest in SITES:
        (inbox,) = [spec for spec in streams.site_streams(dest, SITES) if spec.name == names.inbox_stream(dest)]
        assert {source.name for source in inbox.sources} == {names.outbox_stream(o) for o in SITES if o != dest}
        for source in inbox.sources:
            origin = source.name.removeprefix("OUTBOX_")
            # dest binds to the durable origin keeps for it; origin answers and delivers
            assert allowed(nats_leaf_permissions(dest, SITES), "publish", _bind_source(source))
            assert allowed(nats_leaf_permissions(origin, SITES), "subscribe", _bind_source(source))
            delivery = source.deliver_subject
            assert allowed(nats_leaf_permissions(origin, SITES), "publish", delivery)
            assert allowed(nats_leaf_permissions(dest, SITES), "subscribe", delivery)


def test_leafnode_refuses_another_sites_share_and_forged_deliveries() -> None:
    mine = nats_leaf_permissions(SITE, SITES)
    # s1 may not source what s2 sends to s3, nor deliver as s2, nor pass any chat subject
    api, outbox = subjects.jetstream_api_prefix(OTHER), names.outbox_stream(OTHER)
    stolen = f"{api}.CONSUMER.RESET.{outbox}.{names.outbox_source_durable(THIRD)}"
    forged = f"{subjects.source_deliver_prefix(origin=OTHER, dest=THIRD)}.x"
    assert not allowed(mine, "publish", stolen)
    assert not allowed(mine, "publish", forged)
    # no consumer of its own on another site's OUTBOX, not even on its own lane: its filter and deliver subject would be its choice
    own_lane = subjects.outbox_to_filter(origin=OTHER, dest=SITE)
    for subject in [
        f"{api}.CONSUMER.CREATE.{outbox}.x.{own_lane}",
        f"{api}.CONSUMER.CREATE.{outbox}.x",
        f"{api}.CONSUMER.CREATE.{outbox}",
        f"{api}.CONSUMER.DURABLE.CREATE.{outbox}.x",
        f"{api}.CONSUMER.DELETE.{outbox}.{names.outbox_source_durable(SITE)}",
        f"{api}.CONSUMER.MSG.NEXT.{outbox}.{names.outbox_source_durable(SITE)}",
    ]:
        assert not allowed(mine, "publish", subject), subject
    for subject in [*_site_publishes(SITE, OTHER), *_site_publishes(OTHER, SITE), "_INBOX.x", "$SYS.REQ.SERVER.PING"]:
        assert not allowed(mine, "publish", subject), subject
        assert not allowed(mine, "subscribe", subject), subject


def test_a_lone_site_shares_nothing_but_internal_replies() -> None:
    assert nats_leaf_permissions(SITE, [SITE]) == {"publish": {"allow": ["$JSC.R.*"]}, "subscribe": {"allow": ["$JSC.R.*"]}}
