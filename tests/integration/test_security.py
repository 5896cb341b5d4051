"""Site isolation on NATS (issue 7): per-site users, and leafnodes that carry JetStream sourcing only.

The attempts are made from s2 against s1 and judged on s1's side, through s1's operator: a refused
publish must also leave s1's streams as they were, so that a test cannot pass because the attempt
went nowhere for some unrelated reason. Sourcing OUTBOX_s1 -> INBOX_s2 is the positive control.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, NotFoundError

from schemas import names, subjects
from testkit.clients import connect_nats, nats_settings, nats_tls
from testkit.support import connect_site, wait_for

S1_STREAMS = ("ROOMS_s1", "INBOX_s1", "OUTBOX_s1", "DLQ_s1")

# What s2 must not be able to write into s1 (JetStream publishes), one per lane / stream.
S1_TARGETS = [
    subjects.inbox_local("s1", "member_added"),  # INBOX_s1 local lane
    subjects.inbox_aggregate("s1", "member_added"),  # INBOX_s1 aggregate lane (sourcing only)
    subjects.rooms_command("s1", "create"),  # ROOMS_s1
    subjects.outbox(origin="s1", dest="s2", event_type="member_added"),  # OUTBOX_s1
    "chat.dlq.s1.room_worker",  # DLQ_s1
]

# Management of s1's domain from s2: create a stream, delete / purge OUTBOX_s1, read its info.
S1_MANAGEMENT = [
    ("$JS.s1.API.STREAM.CREATE.{name}", "create"),
    ("$JS.s1.API.STREAM.DELETE.OUTBOX_s1", "delete"),
    ("$JS.s1.API.STREAM.PURGE.OUTBOX_s1", "purge"),
    ("$JS.s1.API.STREAM.UPDATE.OUTBOX_s1", "update"),
    ("$JS.s1.API.STREAM.INFO.OUTBOX_s1", "info"),
]


class Recorder:
    """Asynchronous errors of a connection (permissions violations arrive this way)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    def violations(self, subject: str) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower() and subject.lower() in e.lower()]


async def _connect_as(servers: dict[str, Any], site: str, role: str, recorder: Recorder) -> Client:
    settings = nats_settings(servers, site, role=role)
    return await connect_nats(settings, error_cb=recorder.record, max_reconnect_attempts=0, connect_timeout=5)


@pytest.fixture
async def s1_operator(federated_sites: dict[str, Any]) -> AsyncIterator[Client]:
    client = await connect_site(federated_sites, "s1")
    try:
        yield client
    finally:
        await client.close()


async def _s1_state(s1: Client) -> dict[str, tuple[int, int]]:
    js = s1.jetstream()
    state = {}
    for name in S1_STREAMS:
        info = await js.stream_info(name)
        state[name] = (info.state.first_seq, info.state.last_seq)
    return state


async def _landed(s1: Client, before: dict[str, tuple[int, int]], bodies: set[bytes]) -> list[str]:
    """Which of `bodies` s1's streams stored after `before` (other test runs may add their own messages meanwhile)."""
    js, found = s1.jetstream(), []
    for name, (_, last_seq) in before.items():
        for seq in range(last_seq + 1, (await js.stream_info(name)).state.last_seq + 1):
            try:
                msg = await js.get_msg(name, seq)
            except NotFoundError:
                continue  # deleted again since
            if msg.data in bodies:
                found.append(f"{name}#{seq} {msg.subject}")
    return found


async def _came_through(federated_sites: dict[str, Any], s1: Client, s2: Client | None = None) -> None:
    """Barrier: until a marker sent from s2 after the attempts reaches s1 over the leafnodes, the way an attempt that
    slipped through would have gone; one connection's messages keep their order, so such an attempt is there by now.

    `s2`: the attempts' connection if it may send the marker (an operator's); else they were refused on s2 itself
    (the asserted permissions violations) and a fresh operator connection sends it.
    """
    sender = s2 or await connect_site(federated_sites, "s2")
    subject = f"fed.deliver.s2.to.s1.barrier-{uuid.uuid4().hex}"
    sub = await s1.subscribe(subject)
    await s1.flush()

    async def arrived() -> bool:
        await sender.publish(subject, b"barrier")  # again until s1's interest has reached s2
        await sender.flush()
        try:
            await sub.next_msg(timeout=0.2)
        except NatsTimeoutError:
            return False
        return True

    try:
        await wait_for(arrived, timeout=30, interval=0, what="the barrier from s2 on s1")
    finally:
        await sub.unsubscribe()
        if sender is not s2:
            await sender.close()


async def _refused(attempt: Any) -> str:
    """Run a request or JetStream publish that must not be answered; return how it failed."""
    try:
        answer = await attempt
    except (NoRespondersError, NoStreamResponseError):
        return "no responders"
    except (TimeoutError, NatsTimeoutError):
        return "no answer"
    raise AssertionError(f"expected no answer, got {answer!r}")


# ----------------------------------------------------------------------------- credentials


def test_site_servers_refuse_connections_without_valid_credentials(servers: dict[str, Any]) -> None:
    async def attempt(url: str, **credentials: Any) -> str:
        try:
            client = await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=5, **credentials)
        except NatsError as exc:
            return str(exc)
        await client.close()
        return "connected"

    async def all_attempts() -> None:
        for site, desc in servers["sites"].items():
            assert desc["nats_user"] and desc["service_user"] and desc["nats_user"] != desc["service_user"]
            tls = nats_tls(servers, site)  # a certificate of ours: only the password is wrong or missing
            anonymous = await attempt(desc["nats_url"], **tls)
            wrong = await attempt(desc["nats_url"], user=desc["nats_user"], password=desc["nats_password"] + "x", **tls)
            for outcome in (anonymous, wrong):
                assert "authorization violation" in outcome.lower(), f"{site}: {outcome}"
            # and the right credentials do get in (both users)
            for user, password in ((desc["nats_user"], desc["nats_password"]), (desc["service_user"], desc["service_password"])):
                assert await attempt(desc["nats_url"], user=user, password=password, **tls) == "connected", f"{site}: {user}"

    asyncio.run(all_attempts())


def test_credentials_are_not_shared_between_sites(servers: dict[str, Any]) -> None:
    """s2's users are unknown to s1's server."""
    s1, s2 = servers["sites"]["s1"], servers["sites"]["s2"]

    async def attempt() -> None:
        for user, password in ((s2["nats_user"], s2["nats_password"]), (s2["service_user"], s2["service_password"])):
            with pytest.raises(NatsError, match="(?i)authorization violation"):
                await nats.connect(
                    s1["nats_url"], user=user, password=password, max_reconnect_attempts=0, allow_reconnect=False, **nats_tls(servers, "s2")
                )

    asyncio.run(attempt())


# ----------------------------------------------------------------------------- s2 against s1


@pytest.mark.parametrize("role", ["service", "operator"])
async def test_s2_cannot_publish_into_s1_streams(federated_sites: dict[str, Any], s1_operator: Client, role: str) -> None:
    """s2's service user is stopped by its own permissions; s2's operator (anything within s2) by the leafnodes."""
    before = await _s1_state(s1_operator)
    recorder = Recorder()
    s2 = await _connect_as(federated_sites, "s2", role, recorder)
    attacks: set[bytes] = set()
    try:
        js = s2.jetstream(timeout=2)
        for subject in S1_TARGETS:
            body = json.dumps({"attack": uuid.uuid4().hex}).encode()
            attacks.add(body)
            await _refused(js.publish(subject, body, headers={"Nats-Msg-Id": uuid.uuid4().hex}))
            if role == "service":
                await s2.flush()
                assert recorder.violations(subject), f"no permissions violation for {subject}: {recorder.errors}"
        assert s2.is_connected
        await _came_through(federated_sites, s1_operator, s2 if role == "operator" else None)
    finally:
        await s2.close()
    assert await _landed(s1_operator, before, attacks) == []


@pytest.mark.parametrize("role", ["service", "operator"])
async def test_s2_cannot_manage_streams_of_domain_s1(federated_sites: dict[str, Any], s1_operator: Client, role: str) -> None:
    name = f"X_{uuid.uuid4().hex[:10]}"
    before = await _s1_state(s1_operator)
    recorder = Recorder()
    s2 = await _connect_as(federated_sites, "s2", role, recorder)
    try:
        for template, action in S1_MANAGEMENT:
            subject = template.format(name=name)
            config = {"name": name if action == "create" else "OUTBOX_s1", "subjects": [f"x.{name}.>"] if action == "create" else ["x.>"]}
            await _refused(s2.request(subject, json.dumps(config).encode(), timeout=2))
            if role == "service":
                await s2.flush()
                assert recorder.violations(subject), f"no permissions violation for {subject}: {recorder.errors}"
    finally:
        await s2.close()
    js1 = s1_operator.jetstream()
    with pytest.raises(NotFoundError):
        await js1.stream_info(name)
    after = await _s1_state(s1_operator)
    # OUTBOX_s1 not deleted, purged or changed; other test runs may append to s1's streams meanwhile
    assert {name: (first, last >= before[name][1]) for name, (first, last) in after.items()} == {
        name: (first, True) for name, (first, _) in before.items()
    }
    outbox = await js1.stream_info("OUTBOX_s1")
    assert outbox.config.subjects == [subjects.outbox_filter("s1")]


async def test_s2_cannot_create_any_consumer_on_s1_streams(federated_sites: dict[str, Any], s1_operator: Client) -> None:
    """s2 sources OUTBOX_s1 through the durable s1 created for it (bound by a reset); it may create no consumer of its own,
    not even on its own lane: its filter or deliver subject (e.g. s1's own ROOMS subjects) would be its choice."""
    recorder = Recorder()
    s2 = await _connect_as(federated_sites, "s2", "operator", recorder)
    tag = uuid.uuid4().hex[:8]
    own_lane = subjects.outbox_to_filter(origin="s1", dest="s2")
    attempts = {
        # its own lane, with a filter of its choosing (the extended create subject, then the plain one)
        f"own-{tag}": ("OUTBOX_s1", own_lane, own_lane, f"fed.deliver.s1.to.s2.{tag}"),
        f"own-plain-{tag}": ("OUTBOX_s1", "", own_lane, f"fed.deliver.s1.to.s2.{tag}"),
        # its own lane, delivered into s1's own room commands: s1 would feed its OUTBOX into ROOMS_s1
        f"inject-{tag}": ("OUTBOX_s1", own_lane, own_lane, subjects.rooms_command("s1", "create")),
        # another destination's lane of OUTBOX_s1
        f"to-s3-{tag}": ("OUTBOX_s1", "outbox.s1.to.s3.>", "outbox.s1.to.s3.>", f"fed.deliver.s1.to.s2.{tag}"),
        # the whole stream
        f"all-{tag}": ("OUTBOX_s1", "outbox.s1.>", "outbox.s1.>", f"fed.deliver.s1.to.s2.{tag}"),
        # another stream
        f"rooms-{tag}": ("ROOMS_s1", "chat.room.canonical.s1.>", "chat.room.canonical.s1.>", f"fed.deliver.s1.to.s2.{tag}"),
    }
    try:
        for name, (stream, subject_filter, body_filter, deliver) in attempts.items():
            subject = f"$JS.s1.API.CONSUMER.CREATE.{stream}.{name}" + (f".{subject_filter}" if subject_filter else "")
            config = {"name": name, "durable_name": name, "filter_subject": body_filter, "deliver_subject": deliver}
            await _refused(s2.request(subject, json.dumps({"stream_name": stream, "config": config}).encode(), timeout=2))
            durable = f"$JS.s1.API.CONSUMER.DURABLE.CREATE.{stream}.{name}"
            await _refused(s2.request(durable, json.dumps({"stream_name": stream, "config": config}).encode(), timeout=2))
        # nor reset, delete or pull the durable s1 keeps for s2 in any other way than a reset
        durable_for_s2 = names.outbox_source_durable("s2")
        for verb in ("DELETE", "MSG.NEXT", "INFO"):
            await _refused(s2.request(f"$JS.s1.API.CONSUMER.{verb}.OUTBOX_s1.{durable_for_s2}", b"", timeout=2))
        await _came_through(federated_sites, s1_operator, s2)
    finally:
        await s2.close()
    js1 = s1_operator.jetstream()
    for stream in ("OUTBOX_s1", "ROOMS_s1"):
        present = {c.name for c in await js1.consumers_info(stream)}
        assert not present & set(attempts), f"{stream}: {present & set(attempts)}"
    outbox = {c.name: c for c in await js1.consumers_info("OUTBOX_s1")}
    assert durable_for_s2 in outbox and outbox[durable_for_s2].config.filter_subject == own_lane


async def test_s2_does_not_see_s1_traffic(federated_sites: dict[str, Any], s1_operator: Client) -> None:
    """A subscription to everything on s2 gets none of s1's own subjects (results, inboxes, API), only deliveries."""
    recorder = Recorder()
    s2 = await _connect_as(federated_sites, "s2", "operator", recorder)
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        seen.append(msg.subject)

    try:
        sub = await s2.subscribe(">", cb=record)
        await s2.flush()
        ready = f"fed.deliver.s1.to.s2.ready-{uuid.uuid4().hex}"

        async def interest_known() -> bool:
            """s1 sends what s2 subscribed to (as far as allowed): the leafnodes learned the interest."""
            await s1_operator.publish(ready, b"ready")
            await s1_operator.flush()
            return ready in seen

        await wait_for(interest_known, timeout=30, interval=0.1, what="s2's interest on s1")
        marker = uuid.uuid4().hex
        leaks = [f"chat.user.alice.response.{marker}", f"_INBOX.{marker}", f"$JS.API.INFO.{marker}", f"x.{marker}"]
        for subject in leaks:
            await s1_operator.publish(subject, b"secret")
        # control: the subscription does reach across, for the one thing s1 may send s2 (deliveries)
        delivery = f"fed.deliver.s1.to.s2.{marker}"
        await s1_operator.publish(delivery, b"delivery")
        await s1_operator.flush()
        # the barrier: published after the leaks on the same connection, so a leak that got through is there by now
        await wait_for(lambda: delivery in seen, timeout=10, what="the control message on s2")
        await sub.unsubscribe()
    finally:
        await s2.close()
    assert [s for s in seen if marker in s] == [delivery]


# ----------------------------------------------------------------------------- positive control


async def test_sourcing_outbox_s1_into_inbox_s2_still_works(federated_sites: dict[str, Any], s1_operator: Client) -> None:
    """Bootstrapped as the operators (federated_sites); s1's service user publishes, INBOX_s2 receives."""
    s2 = await connect_site(federated_sites, "s2")
    s1_service = await connect_site(federated_sites, "s1", role="service")
    try:
        js2 = s2.jetstream()
        start = (await js2.stream_info(names.inbox_stream("s2"))).state.last_seq
        marker = uuid.uuid4().hex
        body = json.dumps({"marker": marker}).encode()
        ack = await s1_service.jetstream().publish(
            subjects.outbox(origin="s1", dest="s2", event_type="member_added"), body, headers={"Nats-Msg-Id": f"{marker}:s2"}
        )
        assert ack.stream == "OUTBOX_s1" and ack.domain == "s1"

        async def arrived() -> Any:
            last = (await js2.stream_info(names.inbox_stream("s2"))).state.last_seq
            for seq in range(start + 1, last + 1):
                try:
                    msg = await js2.get_msg(names.inbox_stream("s2"), seq)
                except NotFoundError:
                    continue
                if msg.data == body:
                    return msg
            return None

        msg = await wait_for(arrived, timeout=30, interval=0.2, what="the OUTBOX_s1 event in INBOX_s2")
        assert msg.subject == subjects.inbox_aggregate("s2", "member_added")
        assert msg.headers is not None
        assert msg.headers.get("Nats-Msg-Id") == f"{marker}:s2"
        assert msg.headers.get("Nats-Stream-Source", "").startswith("OUTBOX_s1")
    finally:
        await s2.close()
        await s1_service.close()
