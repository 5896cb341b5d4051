"""The search views' indexes: templates, and the aliases the flow and `chatfed rebuild` write through."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from elasticsearch import BadRequestError, Elasticsearch

from connectors.settings import ElasticSettings


class SearchIndexes(msgspec.Struct, frozen=True, kw_only=True):
    """Alias names the flow writes and reads through (a rebuild swaps the concrete index behind them)."""

    user_room: str
    spotlight: str
    room_names: str

    @classmethod
    def for_site(cls, settings: ElasticSettings, site: str) -> SearchIndexes:
        return cls(
            user_room=settings.user_room_index,
            spotlight=settings.spotlight_index,
            room_names=settings.room_names_index or f"room-names-{site}",
        )


_KEYWORD: Final = {"type": "keyword"}
_DATE: Final = {"type": "date", "format": "epoch_millis"}
_SETTINGS: Final = {"number_of_shards": 1, "auto_expand_replicas": "0-1"}  # 1 shard: terms-lookup source
# Spotlight is the only view that must be refreshed to be seen: user-room (terms lookup) and room-names
# are read by id, which is realtime. A written change is searchable only after the next refresh, so the
# default 1 s interval alone costs ~500 ms of the sub-second publish-to-searchable target on average;
# these are small indexes (one document per membership), where a refresh every 250 ms is cheap.
_SPOTLIGHT_SETTINGS: Final = {"refresh_interval": "250ms"}


def templates(indexes: SearchIndexes) -> dict[str, dict[str, Any]]:
    """Index templates by alias; each covers the alias's concrete indexes `{alias}-v*`."""
    return {
        indexes.user_room: {
            "dynamic": False,
            "properties": {
                "userAccount": _KEYWORD,
                "rooms": _KEYWORD,
                "restrictedRooms": {"type": "flattened"},
                "roomTimestamps": {"type": "flattened"},
                # the membership history that decides which add shapes a membership (views.py): kept, not searched
                "roomJoins": {"type": "object", "enabled": False},
                "createdAt": _DATE,
                "updatedAt": _DATE,
            },
        },
        indexes.spotlight: {
            "dynamic": False,
            "properties": {
                "userAccount": _KEYWORD,
                "roomId": _KEYWORD,
                # search_as_you_type needs the mapper-extras module, absent from this distribution;
                # a lowercased standard-analysed text field serves multi_match bool_prefix as well
                "roomName": {"type": "text", "analyzer": "standard", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
                "roomType": _KEYWORD,
                "siteId": _KEYWORD,
                "joinedAt": _DATE,
                "nameTs": {"type": "long"},
            },
        },
        indexes.room_names: {
            "dynamic": False,
            "properties": {"roomId": _KEYWORD, "name": {"type": "keyword", "index": False}, "nameTs": {"type": "long"}},
        },
    }


def install(es: Elasticsearch, indexes: SearchIndexes) -> None:
    """Put the templates and create `{alias}-v1` behind each alias that does not exist yet (idempotent)."""
    for alias, mappings in templates(indexes).items():
        settings = _SETTINGS | _SPOTLIGHT_SETTINGS if alias == indexes.spotlight else _SETTINGS
        es.indices.put_index_template(
            name=f"chatfed-{alias}",
            index_patterns=[f"{alias}-v*"],
            priority=200,
            template={"settings": settings, "mappings": mappings},
        )
        if es.indices.exists_alias(name=alias):
            continue
        try:
            es.indices.create(index=f"{alias}-v1", aliases={alias: {"is_write_index": True}})
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":  # another process won the race
                raise
