"""The naive search consumer both search benches compare against: fetch, one bulk (no coalescing, no LWW guard), ack."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from elasticsearch import Elasticsearch
from nats.aio.client import Client

from dataflows.search_sync.indexes import SearchIndexes
from dataflows.search_sync.parts import MemberChange, parse
from schemas import names
from schemas.carriers import Delivery


class Stop(Protocol):
    def is_set(self) -> bool: ...


def bulk_ops(msgs: list[Any], idx: SearchIndexes) -> list[dict[str, Any]]:
    """One user-room upsert per change, and the spotlight document indexed or deleted by external version."""
    ops: list[dict[str, Any]] = []
    for msg in msgs:
        parsed = parse(Delivery(subject=msg.subject, data=msg.data, reply=msg.reply, stream="", stream_seq=0, num_delivered=1))
        for part in parsed if isinstance(parsed, list) else []:
            assert isinstance(part, MemberChange)
            doc_id = f"{part.account}_{part.room_id}"
            ops += [{"update": {"_index": idx.user_room, "_id": part.account}}, {"doc": {"userAccount": part.account}, "doc_as_upsert": True}]
            if part.added:
                ops += [
                    {"index": {"_index": idx.spotlight, "_id": doc_id, "version": part.ts, "version_type": "external_gte"}},
                    {"userAccount": part.account, "roomId": part.room_id, "roomName": part.room_name, "roomType": part.room_type, "joinedAt": part.joined_at},
                ]
            else:
                ops.append({"delete": {"_index": idx.spotlight, "_id": doc_id, "version": part.ts, "version_type": "external_gte"}})
    return ops


async def consume(nc: Client, es: Elasticsearch, site: str, idx: SearchIndexes, stop: Stop) -> None:
    """Read `site`'s search-sync durable until `stop` is set."""
    sub = await nc.jetstream().pull_subscribe_bind(durable=names.SEARCH_SYNC_DURABLE, stream=names.inbox_stream(site))
    while not stop.is_set():
        try:
            msgs = await sub.fetch(500, timeout=0.5)
        except TimeoutError:
            continue
        ops = bulk_ops(msgs, idx)
        if ops:
            await asyncio.to_thread(es.bulk, operations=ops)
        for msg in msgs:
            await msg.ack()
