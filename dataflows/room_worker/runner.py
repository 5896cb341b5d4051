"""Carries out room commands: store writes, deduplicated event publishes, the requester's result, then a verdict.

The decisions are handler.py's; this module runs them in batches (rooms in parallel rounds, each room's commands
in stream order), records and carries out their outcomes, retries in place, and stops at an outage.
A little over 300 lines: the bulk round and the one-at-a-time path are two halves of one protocol, read together.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import nats.errors
import uuid_utils
from nats.aio.client import Client

from connectors import natsio
from connectors.jetstream import PublishRejected, publish_all
from dataflows.room_worker import commands as rc
from dataflows.room_worker import store as room_store
from dataflows.room_worker.commands import Command, Notice, Parsed, Publish, Rejected
from dataflows.room_worker.handler import BatchReads, RoomHandler, looked_up
from dataflows.room_worker.outcomes import Outcome, RoomWrites
from dataflows.room_worker.plans import Failure
from dataflows.room_worker.store import Claim, Store
from schemas import streams, subjects
from schemas.carriers import Settle, done, ignored, poison, retry
from schemas.commands import CommandResult, CreateRoom, ErrorCode, encode_command
from schemas.names import is_valid_token

log = logging.getLogger(__name__)

T = TypeVar("T")
# The store's transient errors (store.TRANSIENT), and NATS away or not storing a publish or result.
TRANSIENT: Final[tuple[type[Exception], ...]] = (*room_store.TRANSIENT, nats.errors.Error, TimeoutError, PublishRejected)
# Retried here, in place, before giving up with a delayed nak: a nak'd command is redelivered after
# later commands of the same room have run, so in-place retries keep stream order through short blips
# and the nak only covers real outages (where order across the outage is lost: documented trade-off).
RETRY_PAUSES_S: Final = (0.2, 0.5, 1.0)
ROOM_THREADS: Final = 8


def new_id() -> str:
    """A subscription or row id: uuid7, 32 lowercase hex."""
    return uuid_utils.uuid7().hex


def mint_request_id() -> str:
    """A request id for a command that came without a valid one: hyphenated uuid7."""
    return str(uuid_utils.uuid7())


def now_ms() -> int:
    return int(time.time() * 1000)


def _has_effects(outcome: Outcome) -> bool:
    return bool(outcome.publishes) or bool(outcome.notices) or outcome.writes != RoomWrites()


class RoomCommandRunner:
    """Applies a batch of commands: rooms in parallel threads, each room's commands in stream order."""

    def __init__(
        self,
        store: Store,
        client: Client,
        *,
        site: str,
        max_deliver: int,
        pauses: Sequence[float] = RETRY_PAUSES_S,
        clock: Callable[[], int] = now_ms,
        event_max_accounts: int = streams.EVENT_MAX_ACCOUNTS,
    ) -> None:
        self._store = store
        self._handler = RoomHandler(store, site=site, clock=clock, new_id=new_id, event_max_accounts=event_max_accounts)
        self._client = client
        self._max_deliver = max_deliver
        self._pauses = tuple(pauses)
        self._clock = clock
        self._pool = ThreadPoolExecutor(ROOM_THREADS, thread_name_prefix="room")

    def reject(self, item: Parsed) -> Settle:
        """Ack an unknown suffix; dead-letter a malformed command after telling its requester."""
        if not isinstance(item, Rejected):
            msg = f"reject got a command: {item!r}"
            raise TypeError(msg)
        if item.ignored:
            log.info("acking %s seq %s: %s", item.delivery.stream, item.delivery.stream_seq, item.reason)
            return ignored(item.delivery, item.reason)
        if item.result is not None:
            try:
                self._send_result(item.requester, item.result)
            except TRANSIENT as exc:  # redelivered later, so the requester still hears about it
                return retry(item.delivery, f"transient: {exc!r}")
        return poison(item.delivery, item.reason)

    def apply(self, batches: Sequence[Sequence[object]]) -> list[Settle]:
        """Settle every command of `batches` (lists of one room's commands, from the ordering step)."""
        by_room: dict[str, list[Command]] = {}
        for batch in batches:
            for command in batch:
                if not isinstance(command, Command):
                    msg = f"apply got {command!r}"
                    raise TypeError(msg)
                by_room.setdefault(command.room_id, []).append(command)
        groups = [sorted(cmds, key=lambda c: c.delivery.stream_seq) for cmds in by_room.values()]
        reads = self._prefetch([command for group in groups for command in group])
        # set once a command exhausted its in-place retries: the store (or NATS) is down, so the rest of the
        # batch is nak'd at once instead of each paying the retries (a batch must settle well within ack_wait)
        outage = threading.Event()
        try:  # rooms left half way by an earlier run go one command at a time (their intent is finished first)
            careful = self._store.rooms_with_intents(by_room)
        except TRANSIENT as exc:
            log.warning("intent lookup failed, every room goes one command at a time: %r", exc)
            careful = set(by_room)
        settled: dict[int, Settle] = {}
        # round r holds the r-th command of every room: rooms never wait for each other, a room's commands keep their order
        for depth in range(max(len(group) for group in groups)):
            round_ = [group[depth] for group in groups if len(group) > depth]
            together = [c for c in round_ if c.room_id not in careful and not outage.is_set()]
            fell_back = together
            if len(together) > 1:
                carried, fell_back = self._round(together, reads)
                settled |= carried
            for command in fell_back:
                careful.add(command.room_id)
            one_by_one = [c for c in round_ if c.room_id in careful or outage.is_set()]
            runs = self._pool.map(lambda c: self._apply_one(c, reads, outage), one_by_one)
            for command, settle in zip(one_by_one, runs, strict=True):
                settled[id(command)] = settle
        return [settled[id(command)] for group in groups for command in group]

    def _round(self, commands: list[Command], reads: BatchReads) -> tuple[dict[int, Settle], list[Command]]:
        """Carry out one command of each of many rooms with their bookkeeping in bulk.

        Returns the settles of those carried out (by `id` of the command) and the commands that must go one at a time.

        The same steps as `_execute` (decide, intents, records, writes, events, intents cleared, results), each
        done for every room at once: an intent, a record and an insert of each collection cost one request for
        the whole round instead of one per command. Whatever fails here falls back to `_execute`, which finds
        the intents and records this left and finishes exactly what was decided.
        """
        decided = list(self._pool.map(lambda c: self._try(lambda: self._handler.decide(c, reads)), commands))
        fallback = [c for c, d in zip(commands, decided, strict=True) if isinstance(d, BaseException)]
        claims = {id(c): Claim(outcome=d, nonce=new_id()) for c, d in zip(commands, decided, strict=True) if isinstance(d, Outcome)}
        live = [c for c in commands if id(c) in claims]
        now = self._clock()
        try:
            taken = self._store.save_intents([claims[id(c)] for c in live if _has_effects(claims[id(c)].outcome)], now)
            live, fallback = [c for c in live if c.room_id not in taken], fallback + [c for c in live if c.room_id in taken]
            answered = self._store.record_many([claims[id(c)] for c in live], now)
        except TRANSIENT as exc:
            log.warning("round of %d rooms: bookkeeping failed, one at a time: %r", len(commands), exc)
            return {}, commands
        fresh = [c for c in live if c.dedup_base not in answered]
        try:
            outcomes = [claims[id(c)].outcome for c in fresh]
            self._store.apply_many(outcomes, self._clock())
            self._publish([p for o in outcomes for p in o.publishes])
            self._notify([n for o in outcomes for n in o.notices])
            self._store.clear_intents(c.room_id for c in live if _has_effects(claims[id(c)].outcome))
        except TRANSIENT as exc:
            log.warning("round of %d rooms: writes failed, one at a time: %r", len(commands), exc)
            return {}, fallback + live
        settles: dict[int, Settle] = {}
        for command in live:
            recorded = answered.get(command.dedup_base)
            outcome = claims[id(command)].outcome if recorded is None else recorded.outcome
            try:
                self._send_result(outcome.requester, outcome.result)
            except TRANSIENT as exc:  # its record is there: one at a time, it is answered from it
                log.warning("room %s: result not sent: %r", command.room_id, exc)
                fallback.append(command)
                continue
            settle = done(command.delivery, command.body.timestamp) if recorded is not None else self._settle(command, outcome)
            settles[id(command)] = settle
        return settles, fallback

    def _try(self, step: Callable[[], T]) -> T | BaseException:
        """`step()`, or the transient failure it raised (our own bugs still raise)."""
        try:
            return step()
        except TRANSIENT as exc:
            return exc

    def _prefetch(self, commands: Sequence[Command]) -> BatchReads:
        """The users (by account and by org) of every command of the batch, and its rooms' state, one query each.

        On FerretDB/SQLite a query by anything but `_id` scans its collection, so a lookup per command costs a
        scan of `users` per command. Users are not written by this flow, so reading them once per batch
        sees what a read per command would. A failed read leaves each command to read on its own (and
        retry in place).
        """
        accounts, orgs = looked_up(commands)
        room_ids = {command.room_id for command in commands}
        changed = {command.room_id for command in commands if not isinstance(command.body, CreateRoom)}  # creates read no members
        try:
            return BatchReads(
                users=self._store.users_by_accounts(accounts),
                org_users=self._store.org_members(orgs),
                orgs=frozenset(orgs),
                rooms=self._store.rooms(room_ids),
                members=self._store.members_of(changed),
                room_orgs=self._store.orgs_of(changed),
            )
        except TRANSIENT as exc:
            log.warning("batch user lookup failed, each command looks up its own: %r", exc)
            return BatchReads()

    def _apply_one(self, command: Command, reads: BatchReads, outage: threading.Event) -> Settle:
        if outage.is_set():
            return self._give_up(command, "outage: an earlier command of this batch exhausted its retries")
        last: BaseException | None = None
        for pause in (*self._pauses, None):
            try:
                return self._execute(command, reads)
            except TRANSIENT as exc:
                last = exc
                log.warning("room %s seq %s: transient failure: %r", command.room_id, command.delivery.stream_seq, exc)
                if pause is not None:
                    time.sleep(pause)
            except Exception:
                failure = Failure(code=ErrorCode.INTERNAL, error="internal error")
                self._send_failure(command, failure)
                raise  # our own bug: stop loudly, JetStream still holds the command (STYLE §2)
        outage.set()
        return self._give_up(command, repr(last))

    def _give_up(self, command: Command, why: str) -> Settle:
        """A delayed nak; the settle sink dead-letters it on the last delivery.

        The requester is not sent an error: its outcome is not known yet (an intent saved before the outage is
        still finished by the room's next command), and a request id has one outcome. A client retry with the
        same request id gets the real one once the store is back.
        """
        if command.delivery.num_delivered >= self._max_deliver:
            log.error("room %s seq %s (request %s): giving up after %d deliveries: %s", command.room_id, command.delivery.stream_seq, command.dedup_base, command.delivery.num_delivered, why)
        return retry(command.delivery, f"transient: {why}")

    def _execute(self, command: Command, reads: BatchReads) -> Settle:
        """Finish the room's pending command first; then decide this one, claim its request id and carry it out.

        Claiming records the outcome as the request's one answer; if an answer was recorded before (a retry, a
        redelivery), that one is sent again and nothing is written or published.
        """
        pending = self._store.intent(command.room_id)
        if pending is not None:
            answer, carried_out = self._finish_pending(pending)
            if pending.outcome.request_key == command.dedup_base:
                return self._settle(command, answer) if carried_out else done(command.delivery, command.body.timestamp)
        claim = Claim(outcome=self._handler.decide(command, reads), nonce=new_id())
        effects = _has_effects(claim.outcome)
        if effects:
            self._store.save_intent(claim, self._clock())
        recorded = self._store.record(claim, self._clock())
        if recorded.nonce != claim.nonce:  # answered before: the same answer, no store changes, no new events
            if effects:
                self._store.clear_intent(command.room_id)
            log.info("request %s answered before: resending its result", command.dedup_base)
            self._send_result(recorded.outcome.requester, recorded.outcome.result)
            return done(command.delivery, command.body.timestamp)
        self._carry_out(claim.outcome)
        if effects:
            self._store.clear_intent(command.room_id)
        self._send_result(claim.outcome.requester, claim.outcome.result)
        return self._settle(command, claim.outcome)

    def _finish_pending(self, pending: Claim) -> tuple[Outcome, bool]:
        """Carry out a room's intent left by a run that stopped half way: its request's answer, and whether it was carried out now."""
        recorded = self._store.record(pending, self._clock())
        ours = recorded.nonce == pending.nonce
        if ours:
            self._carry_out(pending.outcome)
        else:  # the run died between saving the intent and finding its request answered already
            log.info("dropping the intent of request %s: it was answered before", pending.outcome.request_key)
        self._store.clear_intent(pending.outcome.room_id)
        self._send_result(recorded.outcome.requester, recorded.outcome.result)
        return recorded.outcome, ours

    def _carry_out(self, outcome: Outcome) -> None:
        """The writes, then the events, then the notices; a rerun writes nothing new and republishes the same ids."""
        self._store.apply(outcome, self._clock())
        self._publish(outcome.publishes)
        self._notify(outcome.notices)

    def _settle(self, command: Command, outcome: Outcome) -> Settle:
        if outcome.ok:
            return done(command.delivery, command.body.timestamp)
        return poison(command.delivery, outcome.reason)

    def _publish(self, publishes: list[Publish]) -> None:
        if publishes:
            natsio.run(publish_all(self._client, [(p.subject, p.data, p.msg_id) for p in publishes]), timeout=30)

    def _notify(self, notices: list[Notice]) -> None:
        """Core-NATS notices to users: at least once (a rerun after a crash sends them again), like results."""
        if notices:
            natsio.run(self._notify_all(notices), timeout=30)

    async def _notify_all(self, notices: list[Notice]) -> None:
        for notice in notices:
            await self._client.publish(notice.subject, notice.data)
        await asyncio.wait_for(self._client.flush(), timeout=10)

    def _send_failure(self, command: Command, failure: Failure) -> None:
        result = rc.error_result(command.request_id, rc.operation_of(command.body), command.room_id, failure, self._clock())
        self._send_result(rc.requester_of(command.body), result)

    def _send_result(self, account: str, result: CommandResult) -> None:
        """Core-NATS publish of the result; no requester to tell is logged, not an error."""
        if not is_valid_token(account) or not is_valid_token(result.request_id):
            log.warning("no result sent for request %s: requester %r is not a subject token", result.request_id, account)
            return
        subject = subjects.command_result(account=account, request_id=result.request_id)
        natsio.run(self._publish_core(subject, encode_command(result)), timeout=30)

    async def _publish_core(self, subject: str, data: bytes) -> None:
        await self._client.publish(subject, data)
        await asyncio.wait_for(self._client.flush(), timeout=10)
