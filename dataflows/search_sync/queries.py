"""The read side of the search views: a user's searchable rooms and room-name typeahead (SYSTEM.md §5)."""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

from schemas.documents import SpotlightDoc, UserRoomDoc, from_mongo


def rooms_for(es: Elasticsearch, index: str, account: str) -> UserRoomDoc | None:
    """The user-room document of `account` (rooms and restrictedRooms), or None if the user has none."""
    try:
        found = es.get(index=index, id=account)
    except NotFoundError:
        return None
    return from_mongo(UserRoomDoc, found["_source"])


def typeahead(es: Elasticsearch, index: str, account: str, text: str, room_type: str | None = None, size: int = 10) -> list[SpotlightDoc]:
    """`account`'s rooms whose name matches `text` as typed so far, best match first, then newest joined."""
    filters: list[dict[str, Any]] = [{"term": {"userAccount": account}}]
    if room_type:
        filters.append({"term": {"roomType": room_type}})
    response = es.search(
        index=index,
        size=size,
        query={
            "bool": {
                "must": [{"multi_match": {"query": text, "type": "bool_prefix", "operator": "and", "fields": ["roomName"]}}],
                "filter": filters,
            }
        },
        sort=["_score", {"joinedAt": {"order": "desc"}}],
    )
    return [from_mongo(SpotlightDoc, hit["_source"]) for hit in response["hits"]["hits"]]
