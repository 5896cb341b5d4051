"""`chatfed room`: submit create / add / remove / role / rename commands to a site's `ROOMS` stream and print the result."""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
from enum import StrEnum
from typing import Annotated, Any

import nats.errors
import typer
import uuid_utils

from chatfed_cli.topology import SiteInfo, load_topology
from connectors import natsio
from connectors.mongo import client as mongo_client
from connectors.settings import MongoSettings
from dataflows.room_worker.commands import REQUEST_ID_HEADER
from dataflows.room_worker.plans import direct_room_id, room_type_of
from dataflows.room_worker.store_mongo import RoomStore
from schemas import subjects
from schemas.commands import (
    AddMembers,
    ChannelRef,
    CreateRoom,
    History,
    RemoveMember,
    RenameRoom,
    RoomCommand,
    UpdateRole,
    decode_command_result,
    encode_command,
)
from schemas.names import is_valid_room_id, is_valid_site_id

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)

_BASE62 = string.digits + string.ascii_letters

SiteOpt = typer.Option(..., "--site", "-s", help="Site that owns the room (its ROOMS stream gets the command).")
RequesterOpt = typer.Option(..., "--requester", "-r", help="Account of the user issuing the command.")
TimeoutOpt = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for the result.")
RequesterIdOpt = typer.Option("", "--requester-id", help="User id of the requester.")
ChannelsOpt = typer.Option("--channel", "-c", help="Channel whose members join, as ROOM or ROOM@SITE (default site: --site; repeat).")


class Role(StrEnum):
    """`newRole` of a role update."""

    OWNER = "owner"
    MEMBER = "member"


def _site(site: str) -> tuple[SiteInfo, MongoSettings]:
    topology = load_topology()
    if site not in topology.sites:
        raise typer.BadParameter(f"unknown site {site}; configured: {', '.join(topology.site_ids)}", param_hint="--site")
    return topology.sites[site], topology.mongo(site)


def channel_refs(values: list[str], default_site: str) -> list[ChannelRef]:
    """`--channel` values (`ROOM` or `ROOM@SITE`) as `{roomId, siteId}`, the site defaulting to the command's."""
    refs = []
    for value in values:
        room_id, at, site = value.rpartition("@")
        if not at:
            room_id, site = value, default_site
        if not is_valid_room_id(room_id) or not is_valid_site_id(site):
            raise typer.BadParameter(f"{value!r} is not ROOM or ROOM@SITE", param_hint="--channel")
        refs.append(ChannelRef(room_id=room_id, site_id=site))
    return refs


def _channel_id() -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(17))


def _dm_id(mongo: MongoSettings, requester: str, other: str) -> str:
    """dm / botDM room id from the two users' ids in the site's `users` collection."""
    db = mongo_client(mongo)[mongo.database]
    found = RoomStore(db).users_by_accounts([requester, other])
    missing = [a for a in (requester, other) if a not in found]
    if missing:
        raise typer.BadParameter(f"user {missing[0]} not found on this site; pass --room-id", param_hint="--user")
    return direct_room_id(found[requester].id, found[other].id)


async def submit(info: SiteInfo, site: str, op: str, body: RoomCommand, account: str, timeout: float) -> dict[str, Any]:
    client = await natsio.connect(info.operator(), name="chatfed-room-cli")
    request_id = str(uuid_utils.uuid7())
    try:
        # subscribed before publishing, so a fast worker's result cannot be missed
        sub = await client.subscribe(subjects.command_result(account=account, request_id=request_id))
        await client.jetstream().publish(subjects.rooms_command(site, op), encode_command(body), headers={REQUEST_ID_HEADER: request_id})
        msg = await sub.next_msg(timeout=timeout)
        decode_command_result(msg.data)  # a result, not something else on the subject
        result: dict[str, Any] = json.loads(msg.data)
        return result
    finally:
        await client.close()


def _run(site: str, op: str, body: RoomCommand, account: str, timeout: float) -> None:
    info, _ = _site(site)
    try:
        result = asyncio.run(submit(info, site, op, body, account, timeout))
    except nats.errors.TimeoutError:
        typer.echo(f"no result within {timeout}s", err=True)
        raise typer.Exit(3) from None
    except natsio.NotPermitted as exc:  # a refused login or certificate
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except TimeoutError as exc:  # NATS not reachable
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(result))
    if result.get("status") != "ok":
        raise typer.Exit(1)


def _now_ms() -> int:
    return int(time.time() * 1000)


@app.command()
def create(
    site: str = SiteOpt,
    requester: str = RequesterOpt,
    name: str = typer.Option("", "--name", "-n", help="Channel name; empty with exactly one --user makes a dm / botDM."),
    user: Annotated[list[str] | None, typer.Option("--user", "-u", help="Member account (repeat).")] = None,
    org: Annotated[list[str] | None, typer.Option("--org", "-o", help="Org id whose members join (repeat).")] = None,
    channel: Annotated[list[str] | None, ChannelsOpt] = None,
    room_id: str = typer.Option("", "--room-id", help="Room id (default: random for a channel, derived for a dm)."),
    requester_id: str = RequesterIdOpt,
    timeout: float = TimeoutOpt,
) -> None:
    """Create a channel, a dm or a botDM."""
    user, org = user or [], org or []
    if not user and not org and not channel:
        raise typer.BadParameter("give at least one --user, --org or --channel", param_hint="--user")
    channels = channel_refs(channel or [], site)
    body = CreateRoom(
        name=name, users=user, orgs=org, channels=channels, room_id=room_id or "-", requester_id=requester_id, requester_account=requester, timestamp=_now_ms()
    )
    if not room_id:
        if room_type_of(body) == "channel":
            room_id = _channel_id()
        else:
            info, mongo = _site(site)
            room_id = _dm_id(mongo, requester, user[0])
    body.room_id = room_id
    _run(site, subjects.RoomOp.CREATE.value, body, requester, timeout)


@app.command()
def add(
    site: str = SiteOpt,
    requester: str = RequesterOpt,
    room_id: str = typer.Option(..., "--room-id", "--room", help="Channel to add members to."),
    user: Annotated[list[str] | None, typer.Option("--user", "-u", help="Account to add (repeat).")] = None,
    org: Annotated[list[str] | None, typer.Option("--org", "-o", help="Org id whose members join (repeat).")] = None,
    channel: Annotated[list[str] | None, ChannelsOpt] = None,
    hide_history: bool = typer.Option(False, "--hide-history", help="New members see only messages from now on."),
    requester_id: str = RequesterIdOpt,
    timeout: float = TimeoutOpt,
) -> None:
    """Add members to a channel: users, org members, and the members of other channels."""
    user, org = user or [], org or []
    if not user and not org and not channel:
        raise typer.BadParameter("give at least one --user, --org or --channel", param_hint="--user")
    channels = channel_refs(channel or [], site)
    history = History(mode="none" if hide_history else "all")
    body = AddMembers(
        room_id=room_id, users=user, orgs=org, channels=channels, history=history, requester_id=requester_id, requester_account=requester, timestamp=_now_ms()
    )
    _run(site, subjects.RoomOp.MEMBER_ADD.value, body, requester, timeout)


@app.command()
def remove(
    site: str = SiteOpt,
    requester: str = RequesterOpt,
    room_id: str = typer.Option(..., "--room-id", "--room", help="Channel to remove from."),
    account: str = typer.Option("", "--account", "-a", help="Account to remove (yourself: leave)."),
    org: str = typer.Option("", "--org", "-o", help="Org to remove."),
    timeout: float = TimeoutOpt,
) -> None:
    """Remove one member or an org from a channel (exactly one of --account / --org)."""
    if bool(account) == bool(org):
        raise typer.BadParameter("give exactly one of --account and --org", param_hint="--account/--org")
    body = RemoveMember(room_id=room_id, requester=requester, account=account, org_id=org, timestamp=_now_ms())
    _run(site, subjects.RoomOp.MEMBER_REMOVE.value, body, requester, timeout)


@app.command()
def role(
    site: str = SiteOpt,
    requester: str = RequesterOpt,
    room_id: str = typer.Option(..., "--room", "--room-id", help="Channel whose member gets the role."),
    account: str = typer.Option(..., "--account", "-a", help="Member whose role changes."),
    new_role: Role = typer.Option(..., "--role", help="owner (promote) or member (demote)."),
    requester_id: str = RequesterIdOpt,
    timeout: float = TimeoutOpt,
) -> None:
    """Promote a channel member to owner, or demote an owner to member (the requester must be an owner)."""
    body = UpdateRole(
        room_id=room_id, account=account, new_role=new_role.value, requester_id=requester_id, requester_account=requester, timestamp=_now_ms()
    )
    _run(site, subjects.RoomOp.MEMBER_ROLE_UPDATE.value, body, requester, timeout)


@app.command()
def rename(
    site: str = SiteOpt,
    requester: str = RequesterOpt,
    room_id: str = typer.Option(..., "--room", "--room-id", help="Channel to rename."),
    name: str = typer.Option(..., "--name", "-n", help="The channel's new name."),
    requester_id: str = RequesterIdOpt,
    timeout: float = TimeoutOpt,
) -> None:
    """Rename a channel (the requester must be an owner)."""
    if not name.strip():
        raise typer.BadParameter("the new name must not be empty", param_hint="--name")
    body = RenameRoom(room_id=room_id, new_name=name, requester_id=requester_id, requester_account=requester, timestamp=_now_ms())
    _run(site, subjects.RoomOp.RENAME.value, body, requester, timeout)
