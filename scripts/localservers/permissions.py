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
    """Binding `INBOX_{dest}`'s source to the durable `origin` keeps for it on `OUTBOX_{origin}`: a consumer reset of that
    one durable, nothing else (no consumer creation, so no filter or deliver subject of the destination's choosing)."""
    api, outbox = subjects.jetstream_api_prefix(origin), names.outbox_stream(origin)
    return [f"{api}.CONSUMER.RESET.{outbox}.{names.outbox_source_durable(dest)}"]


def _flow_control(origin: str) -> list[str]:
    outbox = names.outbox_stream(origin)
    return [f"$JS.FC.{outbox}.>", f"$JS.FC.{origin}.*.{outbox}.>"]


def nats_leaf_permissions(site: str, sites: Iterable[str]) -> Permissions:
    """Hub-side permissions of `site`'s leafnode connection, among `sites`: only what JetStream sourcing needs.

    On a leafnode, `publish` is what the site may send into the hub and `subscribe` what the hub may
    send to the site; the hub enforces both and also hands them to the site, which applies them
    locally. For each other site `o`, `site` may:
      - ask o's JetStream (through $JS.{o}.API) to reset the durable `fed-to-{site}` that o keeps on
        OUTBOX_{o}, filtered to `outbox.{o}.to.{site}.>` (bootstrap creates it on o's side): that is how a
        source binds to an origin-created consumer (durable sourcing, nats-server 2.14+). It may create no
        consumer at all, so no filter or deliver subject of its own choosing, on any stream of o;
      - answer the flow-control requests of that durable ($JS.FC.OUTBOX_{o}.…, two forms): its acks;
      - deliver its own OUTBOX to o on `fed.deliver.{site}.to.{o}.…` (messages, heartbeats and
        flow-control requests of the durable it keeps for o) and answer o's API requests ($JSC.R.…);
    and receive the same from the others. Nothing else crosses: room commands, INBOX/OUTBOX/DLQ
    subjects, stream management, consumer creation or deletion, pulls, acks, _INBOX, $SYS.
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
