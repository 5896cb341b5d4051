"""What each NATS user of a site may do, built from the subject layout (schemas/subjects.py) and names.

Built, not re-typed: a change of the layout changes the permissions with it. The JetStream API, ack and
flow-control subjects are the NATS server's own layout; they name chatfed's streams through schemas/names.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas import names, subjects

Permissions = dict[str, dict[str, list[str]]]

REPLY_INBOXES = "_INBOX.>"  # nats-py's request replies, pull deliveries and publish acks
JS_INTERNAL_REPLIES = "$JSC.R.*"  # replies to JetStream's internal API requests ($LDS. loop detection is exempt)


def worked_streams(site: str) -> tuple[str, ...]:
    """The streams the flows of `site` read through durables, each once, in flow order."""
    return tuple(dict.fromkeys(names.flow_stream(site, flow) for flow in names.FLOWS))


def _pull(stream: str) -> str:
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*"


def _consumer_info(stream: str) -> str:
    return f"$JS.API.CONSUMER.INFO.{stream}.*"


def nats_service_permissions(site: str) -> Permissions:
    """What a site's dataflows (and a site-local API) may do: nothing outside the site's own streams.

    Publish: room commands, the INBOX *local* lane (the aggregate lane is written only by sourcing),
    OUTBOX and DLQ; pull requests on the worked streams and their durables' info; acks of their deliveries;
    results to requesters and subscription notices to users; settle notices between a flow's processes. Subscribe: reply inboxes (pull
    deliveries, publish acks).
    """
    worked = worked_streams(site)
    return {
        "publish": {
            "allow": [
                subjects.rooms_filter(site),
                subjects.inbox_local_filter(site),
                subjects.outbox_filter(site),
                subjects.dlq_filter(site),
                *(_pull(stream) for stream in worked),
                # a flow checks its durable's delivery contract at start (read-only)
                *(_consumer_info(stream) for stream in worked),
                # ack subjects: $JS.ACK.<stream>.… and the domain form $JS.ACK.<domain>.<account hash>.<stream>.…
                *(f"$JS.ACK.{stream}.>" for stream in worked),
                *(f"$JS.ACK.{site}.*.{stream}.>" for stream in worked),
                subjects.command_result_filter(),
                subjects.subscription_update_filter(),  # room_worker's role-change notices to users
                subjects.release_filter(),  # a flow process tells the one that pulled a message it was settled
            ]
        },
        "subscribe": {"allow": [REPLY_INBOXES]},
    }


def _source_api(origin: str, dest: str) -> list[str]:
    """Creating `INBOX_{dest}`'s source consumer on `OUTBOX_{origin}` (its filter is part of the subject), and its info."""
    api, outbox = subjects.jetstream_api_prefix(origin), names.outbox_stream(origin)
    return [
        f"{api}.CONSUMER.CREATE.{outbox}.*.{subjects.outbox_to_filter(origin=origin, dest=dest)}",
        f"{api}.CONSUMER.INFO.{outbox}.*",
    ]


def _flow_control(origin: str) -> list[str]:
    outbox = names.outbox_stream(origin)
    return [f"$JS.FC.{outbox}.>", f"$JS.FC.{origin}.*.{outbox}.>"]


def nats_leaf_permissions(site: str, sites: Iterable[str]) -> Permissions:
    """Hub-side permissions of `site`'s leafnode connection, among `sites`: only what JetStream sourcing needs.

    On a leafnode, `publish` is what the site may send into the hub and `subscribe` what the hub may
    send to the site; the hub enforces both and also hands them to the site, which applies them
    locally. For each other site `o`, `site` may:
      - ask o's JetStream (through $JS.{o}.API) to create a source consumer on OUTBOX_{o} filtered to
        `outbox.{o}.to.{site}.>`: the filter is part of the create subject and the server rejects a
        request whose body asks for another one;
      - read the info of consumers on OUTBOX_{o}. Sourcing does not need it, but the hub propagates a
        site's `$JS.{o}.API.CONSUMER.>` interest only if some allowed subject lies under it that its
        reverse matcher can find, and it does not find entries with a `*` in the middle (nats-server
        2.15, Sublist.ReverseMatch), like the create subject above;
      - answer the flow-control requests of those consumers ($JS.FC.OUTBOX_{o}.…, two forms);
      - deliver its own OUTBOX to o on `fed.deliver.{site}.to.{o}.…` (messages, heartbeats and
        flow-control requests of o's source consumer) and answer o's API requests ($JSC.R.…);
    and receive the same from the others. Nothing else crosses: room commands, INBOX/OUTBOX/DLQ
    subjects, stream management, pulls, acks, consumer deletion, _INBOX, $SYS.
    """
    others = [o for o in sites if o != site]
    send: list[str] = []
    receive: list[str] = []
    for o in others:
        send += [*_source_api(o, site), *_flow_control(o), subjects.source_deliver_filter(origin=site, dest=o)]
        receive += [*_source_api(site, o), subjects.source_deliver_filter(origin=o, dest=site)]
    if others:
        receive += _flow_control(site)
    common = [JS_INTERNAL_REPLIES]
    return {"publish": {"allow": sorted(set(send)) + common}, "subscribe": {"allow": sorted(set(receive)) + common}}
