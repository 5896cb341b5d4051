"""Subject and stream names, and the stream/consumer configurations built from them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from schemas import names, streams, subjects
from schemas.subjects import InboxSubject, RoomOp

BUILDERS: list[tuple[str, Callable[[], str], str]] = [
    ("rooms_create", lambda: subjects.rooms_command("s1", RoomOp.CREATE), "chat.room.canonical.s1.create"),
    ("rooms_add", lambda: subjects.rooms_command("s1", "member.add"), "chat.room.canonical.s1.member.add"),
    (
        "rooms_remove",
        lambda: subjects.rooms_command("site-a", "member.remove"),
        "chat.room.canonical.site-a.member.remove",
    ),
    ("rooms_filter", lambda: subjects.rooms_filter("s1"), "chat.room.canonical.s1.>"),
    (
        "outbox",
        lambda: subjects.outbox(origin="s1", dest="s2", event_type="member_added"),
        "outbox.s1.to.s2.member_added",
    ),
    ("outbox_filter", lambda: subjects.outbox_filter("s1"), "outbox.s1.>"),
    ("outbox_to_filter", lambda: subjects.outbox_to_filter(origin="s1", dest="s2"), "outbox.s1.to.s2.>"),
    ("inbox_local", lambda: subjects.inbox_local("s1", "member_removed"), "chat.inbox.s1.member_removed"),
    ("inbox_local_filter", lambda: subjects.inbox_local_filter("s1"), "chat.inbox.s1.*"),
    (
        "inbox_aggregate",
        lambda: subjects.inbox_aggregate("s2", "member_added"),
        "chat.inbox.s2.aggregate.member_added",
    ),
    ("inbox_aggregate_filter", lambda: subjects.inbox_aggregate_filter("s2"), "chat.inbox.s2.aggregate.>"),
    ("dlq", lambda: subjects.dlq("s1", "search_sync"), "chat.dlq.s1.search_sync"),
    ("dlq_filter", lambda: subjects.dlq_filter("s1"), "chat.dlq.s1.>"),
    (
        "command_result",
        lambda: subjects.command_result(account="alice", request_id="0195f0a2-7c1d"),
        "chat.user.alice.response.0195f0a2-7c1d",
    ),
    ("command_result_filter", subjects.command_result_filter, "chat.user.*.response.*"),
    ("release_filter", subjects.release_filter, "_INBOX.release.>"),
    ("jetstream_api_prefix", lambda: subjects.jetstream_api_prefix("s2"), "$JS.s2.API"),
    ("source_deliver_prefix", lambda: subjects.source_deliver_prefix(origin="s1", dest="s2"), "fed.deliver.s1.to.s2"),
    ("source_deliver_filter", lambda: subjects.source_deliver_filter(origin="s1", dest="s2"), "fed.deliver.s1.to.s2.>"),
    ("rooms_stream", lambda: names.rooms_stream("s1"), "ROOMS_s1"),
    ("outbox_stream", lambda: names.outbox_stream("s1"), "OUTBOX_s1"),
    ("inbox_stream", lambda: names.inbox_stream("site-b"), "INBOX_site-b"),
    ("dlq_stream", lambda: names.dlq_stream("s1"), "DLQ_s1"),
    ("durable_room_worker", lambda: names.ROOM_WORKER_DURABLE, "room-worker"),
    ("durable_inbox_worker", lambda: names.INBOX_WORKER_DURABLE, "inbox-worker"),
    ("durable_search_sync", lambda: names.SEARCH_SYNC_DURABLE, "search-sync"),
    # the tests' spelling of the names above (schemas/subjects.py)
    ("alias_inbox_stream", lambda: names.inbox_stream("s1"), names.inbox_stream("s1")),
    ("alias_durable", lambda: names.SEARCH_SYNC_DURABLE, names.SEARCH_SYNC_DURABLE),
]


@pytest.mark.parametrize(("build", "expected"), [b[1:] for b in BUILDERS], ids=[b[0] for b in BUILDERS])
def test_builder(build: Callable[[], str], expected: str) -> None:
    assert build() == expected


INVALID: list[tuple[str, Callable[[], str]]] = [
    ("site_uppercase", lambda: subjects.inbox_local("S1", "member_added")),
    ("site_empty", lambda: subjects.rooms_filter("")),
    ("site_dot", lambda: subjects.outbox(origin="s1.x", dest="s2", event_type="member_added")),
    ("site_underscore", lambda: names.rooms_stream("s_1")),
    ("site_leading_dash", lambda: subjects.rooms_filter("-s1")),
    ("deliver_site_star", lambda: subjects.source_deliver_filter(origin="s1", dest="*")),
    ("api_domain_dot", lambda: subjects.jetstream_api_prefix("s1.x")),
    ("dest_wildcard", lambda: subjects.outbox_to_filter(origin="s1", dest="*")),
    ("type_dot", lambda: subjects.inbox_aggregate("s1", "member.added")),
    ("type_gt", lambda: subjects.outbox(origin="s1", dest="s2", event_type=">")),
    ("type_empty", lambda: subjects.inbox_local("s1", "")),
    ("type_reserved_lane", lambda: subjects.inbox_local("s1", "aggregate")),
    ("op_unknown", lambda: subjects.rooms_command("s1", "room.rename")),
    ("flow_space", lambda: subjects.dlq("s1", "search sync")),
    ("account_dot", lambda: subjects.command_result(account="helper.bot", request_id="q")),
    ("account_tab", lambda: subjects.command_result(account="a\tb", request_id="q")),
    ("request_id_star", lambda: subjects.command_result(account="alice", request_id="*")),
]


@pytest.mark.parametrize("build", [i[1] for i in INVALID], ids=[i[0] for i in INVALID])
def test_builder_rejects_invalid_token(build: Callable[[], str]) -> None:
    with pytest.raises(ValueError, match="invalid"):
        build()


PARSED: list[tuple[str, InboxSubject | None]] = [
    ("chat.inbox.s1.member_added", InboxSubject("s1", "local", "member_added")),
    ("chat.inbox.site-b.aggregate.room_renamed", InboxSubject("site-b", "aggregate", "room_renamed")),
    ("chat.inbox.s1.aggregate", None),
    ("chat.inbox.s1.aggregate.a.b", None),
    ("chat.inbox.S1.member_added", None),
    ("chat.inbox.s1", None),
    ("outbox.s1.to.s2.member_added", None),
    ("chat.dlq.s1.search_sync", None),
]


@pytest.mark.parametrize(("subject", "expected"), PARSED, ids=[p[0] for p in PARSED])
def test_parse_inbox(subject: str, expected: InboxSubject | None) -> None:
    assert subjects.parse_inbox(subject) == expected


def test_parse_inbox_inverts_builders() -> None:
    assert subjects.parse_inbox(subjects.inbox_local("s1", "x")) == ("s1", "local", "x")
    assert subjects.parse_inbox(subjects.inbox_aggregate("s1", "x")) == ("s1", "aggregate", "x")


def test_parse_rooms_command() -> None:
    assert subjects.parse_rooms_command("chat.room.canonical.s1.member.remove") == (
        "s1",
        RoomOp.MEMBER_REMOVE,
    )
    assert subjects.parse_rooms_command("chat.room.canonical.s1.room.rename") is None
    assert subjects.parse_rooms_command("chat.inbox.s1.member_added") is None


def test_token_predicates() -> None:
    assert names.is_valid_token("helper_bot-1")
    assert not any(names.is_valid_token(t) for t in ["", "a.b", "a*", "a>", "a b", "a\nb"])
    assert names.is_valid_site_id("site-a1")
    assert not any(names.is_valid_site_id(s) for s in ["", "Site", "s_1", "s.1", "s 1", "é", "-s1"])


def test_site_streams() -> None:
    rooms, outbox, inbox, dlq = streams.site_streams("s2", ["s1", "s2", "s3", "s1"])
    assert (rooms.name, rooms.subjects, rooms.max_age_s) == (
        "ROOMS_s2",
        ["chat.room.canonical.s2.>"],
        7 * 86400,
    )
    assert (outbox.name, outbox.subjects, outbox.max_age_s) == ("OUTBOX_s2", ["outbox.s2.>"], 7 * 86400)
    assert inbox.subjects == ["chat.inbox.s2.*", "chat.inbox.s2.aggregate.>"]
    assert inbox.max_age_s == 30 * 86400
    assert [s.duplicate_window_s for s in (rooms, outbox, inbox)] == [300, 300, 300]
    assert (dlq.name, dlq.subjects, dlq.max_age_s) == ("DLQ_s2", ["chat.dlq.s2.>"], 30 * 86400)
    assert inbox.sources == [
        streams.SourceSpec(
            name="OUTBOX_s1",
            external_api_prefix="$JS.s1.API",
            transform_src="outbox.s1.to.s2.>",
            transform_dest="chat.inbox.s2.aggregate.>",
            durable="fed-to-s2",
            deliver_subject="fed.deliver.s1.to.s2.durable",
        ),
        streams.SourceSpec(
            name="OUTBOX_s3",
            external_api_prefix="$JS.s3.API",
            transform_src="outbox.s3.to.s2.>",
            transform_dest="chat.inbox.s2.aggregate.>",
            durable="fed-to-s2",
            deliver_subject="fed.deliver.s3.to.s2.durable",
        ),
    ]
    assert not rooms.sources and not outbox.sources and not dlq.sources
    with pytest.raises(ValueError, match="invalid site id"):
        streams.site_streams("s1", ["S2"])


def test_each_site_keeps_one_source_durable_per_destination_on_its_outbox() -> None:
    """What the other sites' INBOX sources bind to: same names, same deliver subjects, filtered to their own lane."""
    specs = streams.outbox_source_consumers("s1", ["s1", "s2", "s3"])
    assert [(c.stream, c.durable, c.filter_subject, c.deliver_subject) for c in specs] == [
        ("OUTBOX_s1", "fed-to-s2", "outbox.s1.to.s2.>", "fed.deliver.s1.to.s2.durable"),
        ("OUTBOX_s1", "fed-to-s3", "outbox.s1.to.s3.>", "fed.deliver.s1.to.s3.durable"),
    ]
    for dest in ("s2", "s3"):
        (inbox,) = [spec for spec in streams.site_streams(dest, ["s1", "s2", "s3"]) if spec.sources]
        (source,) = [src for src in inbox.sources if src.name == "OUTBOX_s1"]
        (durable,) = [c for c in specs if c.durable == source.durable]
        assert (source.deliver_subject, source.transform_src) == (durable.deliver_subject, durable.filter_subject)


def test_site_consumers() -> None:
    room_worker, inbox_worker, search_sync = streams.site_consumers("s1")
    assert (room_worker.stream, room_worker.durable, room_worker.filter_subjects) == (
        "ROOMS_s1",
        "room-worker",
        [],
    )
    assert room_worker.max_ack_pending == 1000
    assert (inbox_worker.stream, inbox_worker.filter_subjects) == ("INBOX_s1", ["chat.inbox.s1.aggregate.>"])
    assert search_sync.stream == "INBOX_s1" and search_sync.durable == "search-sync"
    assert search_sync.filter_subjects == [
        "chat.inbox.s1.member_added",
        "chat.inbox.s1.member_removed",
        "chat.inbox.s1.room_renamed",
        "chat.inbox.s1.aggregate.member_added",
        "chat.inbox.s1.aggregate.member_removed",
        "chat.inbox.s1.aggregate.room_renamed",
    ]
    for spec in (room_worker, inbox_worker, search_sync):
        assert (spec.ack_wait_s, spec.max_deliver, spec.deliver_all) == (60, 20, True)
    assert inbox_worker.max_ack_pending == search_sync.max_ack_pending == 20000
