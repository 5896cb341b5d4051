"""The search views' indexes: templates, and the aliases the flow and `chatfed rebuild` write through.

Each alias points at one concrete index `{alias}-v{version}` (`v1` from `install`, a timestamp from a
rebuild), created from the template `chatfed-{alias}` that matches `{alias}-v*`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec
from elasticsearch import AuthorizationException, BadRequestError, Elasticsearch

from connectors.errors import ConfigError
from connectors.settings import ElasticSettings
from schemas import names


class SearchIndexes(msgspec.Struct, frozen=True, kw_only=True):
    """Alias names the flow writes and reads through (a rebuild swaps the concrete index behind them)."""

    user_room: str
    spotlight: str
    room_names: str

    @classmethod
    def for_site(cls, settings: ElasticSettings, site: str) -> SearchIndexes:
        """The aliases `settings` name, each defaulting to the site's (schemas/names.py)."""
        return cls(
            user_room=settings.user_room_index or names.user_room_alias(site),
            spotlight=settings.spotlight_index or names.spotlight_alias(site),
            room_names=settings.room_names_index or names.room_names_alias(site),
        )

    @property
    def aliases(self) -> tuple[str, str, str]:
        return self.user_room, self.spotlight, self.room_names


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
                # the LWW guard's stamps, read only from _source (mget): not indexed, which halves the cost of
                # rewriting an account's document (bench: 0.9 -> 0.47 ms per rewrite at 100 rooms)
                "roomTimestamps": {"type": "flattened", "index": False, "doc_values": False},
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
        es.indices.put_index_template(
            name=template_name(alias),
            index_patterns=[f"{alias}-v*"],
            priority=200,
            template={"settings": template_settings(indexes, alias), "mappings": mappings},
        )
        if es.indices.exists_alias(name=alias):
            continue
        try:
            create_version(es, alias, "1", write_alias=alias)
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":  # another process won the race
                raise


def ensure_installed(es: Elasticsearch, indexes: SearchIndexes) -> None:
    """What search_sync does at start: nothing when every alias exists (all its own user may check), else `install`.

    A site's search_sync user may not create indexes or aliases (`chatfed bootstrap` does that, as the operator): its
    refusal becomes a ConfigError naming the fix instead of a retry loop.
    """
    if all(es.indices.exists_alias(name=alias) for alias in indexes.aliases):
        return
    try:
        install(es, indexes)
    except AuthorizationException:
        missing = ", ".join(indexes.aliases)
        raise ConfigError(f"search views {missing} missing and this user may not create them: run `chatfed bootstrap`") from None


def template_name(alias: str) -> str:
    return f"chatfed-{alias}"


def template_settings(indexes: SearchIndexes, alias: str) -> dict[str, Any]:
    """The index settings the template of `alias` gives its concrete indexes."""
    return _SETTINGS | _SPOTLIGHT_SETTINGS if alias == indexes.spotlight else dict(_SETTINGS)


# A bulk fill (chatfed rebuild): no refresh and no replica to keep in step until the index is complete.
FILL_SETTINGS: Final = {"refresh_interval": "-1", "number_of_replicas": 0, "auto_expand_replicas": False}


def restore_settings(es: Elasticsearch, indexes: SearchIndexes, targets: Mapping[str, str]) -> None:
    """Give each index of `targets` (alias -> index, filled with `FILL_SETTINGS`) its template's settings back.

    A key the template lacks is reset. Indexes wanting the same settings share a request (each is a cluster-state update).
    """
    groups: dict[tuple[tuple[str, Any], ...], list[str]] = {}
    for alias, index in targets.items():
        wanted = template_settings(indexes, alias)
        groups.setdefault(tuple((key, wanted.get(key)) for key in FILL_SETTINGS), []).append(index)
    for settings, group in groups.items():
        es.indices.put_settings(index=",".join(group), settings=dict(settings))


def create_version(
    es: Elasticsearch, alias: str, version: str, *, write_alias: str | None, settings: Mapping[str, Any] | None = None
) -> str:
    """Create `{alias}-v{version}` (shaped by the alias's template, `settings` on top), written through `write_alias` if any."""
    index = f"{alias}-v{version}"
    es.indices.create(
        index=index, aliases={write_alias: {"is_write_index": True}} if write_alias else None, settings=dict(settings) if settings else None
    )
    return index


def swap_aliases(es: Elasticsearch, targets: Mapping[str, str]) -> list[str]:
    """Point every alias of `targets` (alias -> index) at its index in one atomic request; the indexes it left."""
    old: list[str] = []
    actions: list[dict[str, Any]] = []
    for alias, new_index in targets.items():
        for index in es.indices.get_alias(name=alias):
            old.append(index)
            actions.append({"remove": {"index": index, "alias": alias}})
        actions.append({"add": {"index": new_index, "alias": alias, "is_write_index": True}})
    es.indices.update_aliases(actions=actions)
    return old


def drop_aliases(es: Elasticsearch, aliases: Mapping[str, str]) -> None:
    """Remove each alias (alias -> its index) and the template a flow writing through it installed; absent ones are fine."""
    quiet = es.options(ignore_status=404)
    for alias, index in aliases.items():
        quiet.indices.delete_alias(index=index, name=alias)
        quiet.indices.delete_index_template(name=template_name(alias))


def delete_indexes(es: Elasticsearch, concrete: Iterable[str]) -> None:
    """Delete concrete indexes (old versions, or a half-filled rebuild); missing ones are fine."""
    if wanted := ",".join(concrete):
        es.indices.delete(index=wanted, ignore_unavailable=True)
