"""Every name chatfed gives things comes from schemas/names.py, and the places that use them agree."""

from __future__ import annotations

import pytest

from connectors.errors import ConfigError
from connectors.settings import load_settings
from dataflows.search_sync.indexes import SearchIndexes
from schemas import names, streams
from schemas.names import identifier_problem


def test_flows_and_their_durables() -> None:
    assert names.FLOWS == ("room_worker", "inbox_mirror", "search_sync")
    assert names.FLOW_DURABLES == {"room_worker": "room-worker", "inbox_mirror": "inbox-worker", "search_sync": "search-sync"}
    assert [names.flow_module(flow) for flow in names.FLOWS] == ["dataflows.room_worker", "dataflows.inbox_mirror", "dataflows.search_sync"]
    with pytest.raises(ValueError, match="unknown flow"):
        names.flow_module("search-sync")


def test_each_flow_reads_its_durable_on_its_stream() -> None:
    """The servers' side of every durable (site_consumers) names the stream and durable the flow reads."""
    for flow in names.FLOWS:
        spec = streams.flow_consumer("s1", flow)
        assert (spec.stream, spec.durable) == (names.flow_stream("s1", flow), names.FLOW_DURABLES[flow])
    assert {spec.durable for spec in streams.site_consumers("s1")} == set(names.FLOW_DURABLES.values())


def test_stores_default_to_the_site_names() -> None:
    env = {"CHATFED_SITE_ID": "site-a", "CHATFED_NATS_URL": "nats://127.0.0.1:4222"}
    settings = load_settings(env)
    assert settings.mongo.database == names.mongo_database("site-a") == "chat_site-a"
    elastic = settings.elastic
    assert (elastic.user_room_index, elastic.spotlight_index, elastic.room_names_index) == (
        "user-room-site-a",
        "spotlight-site-a",
        "room-names-site-a",
    )
    assert SearchIndexes.for_site(elastic, "site-a") == SearchIndexes(
        user_room=names.user_room_alias("site-a"), spotlight=names.spotlight_alias("site-a"), room_names=names.room_names_alias("site-a")
    )


@pytest.mark.parametrize("site", ["", "S1", "s_1", "s.1", "-s1", "s 1", "é"])
def test_one_site_id_rule(site: str) -> None:
    """Settings, stream and store names all refuse what `is_valid_site_id` refuses."""
    assert not names.is_valid_site_id(site)
    with pytest.raises(ConfigError, match="CHATFED_SITE_ID"):
        load_settings({"CHATFED_SITE_ID": site or " ", "CHATFED_NATS_URL": "nats://127.0.0.1:4222"})
    for build in (names.rooms_stream, names.inbox_stream, names.user_room_alias, names.mongo_database):
        with pytest.raises(ValueError, match="invalid site id"):
            build(site)


def test_identifier_problem_names_the_first_bad_id() -> None:
    assert identifier_problem(room_ids=["r1"], accounts=["alice", "helper.bot"]) is None
    assert identifier_problem(room_ids=["r1", "r.2"], accounts=["a b"]) == (
        "invalid room id 'r.2': needs a non-empty id without '.', '*', '>' or whitespace"
    )
    assert "invalid account 'a b'" in (identifier_problem(accounts=["a b"]) or "")
