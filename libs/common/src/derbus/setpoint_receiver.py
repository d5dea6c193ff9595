"""Every setpoint receiver's bus and REST side, once: commands in, answers out, before any device.

A service that takes setpoints (the edge simulator, the meter gateway) implements
`SetpointReceiver` (which sites and devices it has, how a valid command reaches a device) and
calls `serve_setpoints(service, receiver)`. That subscribes to `control.set` and adds
`POST /devices/{device_id}/setpoints`, with one behaviour for every receiver:

* a payload that fails `SetpointCommand` is dead-lettered and counted by the service runtime;
  on a site this receiver serves, when it carries a `setpoint_id`, it is answered `rejected`
  naming the field and the reason (`derbus.setpoints.invalid_command_ack`);
* a valid command for a device the receiver does not have on a site it serves is answered
  `rejected` ("unknown device …") — unless the receiver declared the targets it takes
  (`targets=`) and the command's is not one of them: then another receiver of the same site
  (e.g. the EV chargers' central system beside the site's simulator or gateway) owns it;
* a command for a site it does not serve is left alone: another receiver owns that site (each
  site is served by one receiver);
* anything else goes to the device's `SetpointArbiter`, whose acks the receiver publishes
  (`accepted` / `queued` / `rejected`, later `superseded` / `expired`).

Over REST the same command (`SetpointRequest`, stamped with the receiver's clock) is answered
with its first ack as the body: 200 `accepted`, 202 `queued`, 422 `rejected`; a body that fails
the schema gets FastAPI's 422 naming the field; an unknown device or site 404; a device id
that several sites have, without `site_id`, 409; no ack within the timeout 504.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, HTTPException, Query, Response
from prometheus_client import Counter
from pydantic import ValidationError

from derbus import topics
from derbus.bus.base import RawMessage
from derbus.http import ERROR_REF, TokenDep, errors
from derbus.messages import (
    AckStatus,
    SetpointAck,
    SetpointCommand,
    SetpointRequest,
    SetpointTarget,
)
from derbus.service import Context, Service
from derbus.setpoints import invalid_command_ack, unknown_device_ack

REST_STATUS: dict[AckStatus, int] = {
    "accepted": 200,
    "queued": 202,
    "rejected": 422,
    "superseded": 200,
    "expired": 200,
}
"""HTTP status of a REST setpoint answer by the status of its first ack."""


class SetpointReceiver(Protocol):
    """What a service that takes setpoints tells `serve_setpoints`."""

    @property
    def source(self) -> str:
        """Written as `source` in the acks it sends."""
        ...

    def now(self) -> datetime:
        """The receiver's current time, UTC (stamps REST commands and rejections)."""
        ...

    def sites(self) -> Iterable[str]:
        """The sites this receiver serves."""
        ...

    def devices(self, site_id: str) -> Collection[str] | None:
        """The device ids it has on a site; None when it does not serve the site."""
        ...

    async def submit(
        self, site_id: str, device_id: str, cmd: SetpointCommand
    ) -> asyncio.Future[SetpointAck]:
        """Hand a valid command to one of its devices, which publishes every ack on the bus.

        Returns a future resolved with the command's first ack (it may resolve later, e.g. after
        a device write); callers that do not need it drop it.
        """
        ...


class SetpointAnswers:
    """The bus side of `serve_setpoints`: one object per receiving service."""

    def __init__(
        self,
        service: Service[Any, Any],
        receiver: SetpointReceiver,
        targets: Collection[SetpointTarget] | None = None,
    ) -> None:
        self.service = service
        self.receiver = receiver
        self.targets = targets
        self.rejected = Counter(
            "derbus_setpoints_rejected_total",
            "Setpoints refused before reaching a device (invalid payload with an id, unknown device)",
            ["reason"],
            registry=service.metrics.registry,
        )

    async def on_setpoint(self, cmd: SetpointCommand, ctx: Context) -> None:
        """A valid command: to the device, `rejected` for an unknown one, other sites ignored."""
        devices = self.receiver.devices(ctx.site_id)
        device_id = ctx.device_id
        if devices is None or device_id is None:
            return  # another receiver's site
        if device_id not in devices:
            if self.targets is not None and cmd.target not in self.targets:
                return  # another receiver of this site takes that target
            ack = unknown_device_ack(cmd, device_id, devices, self.receiver.source, self.now())
            self.rejected.labels(reason="unknown_device").inc()
            await ctx.publish(topics.SETPOINT_ACK, ack, device_id=device_id)
            return
        await self.receiver.submit(ctx.site_id, device_id, cmd)

    async def on_invalid(self, raw: RawMessage, err: ValidationError, ctx: Context) -> None:
        """A payload that failed the schema (already dead-lettered): `rejected` if it has an id."""
        if ctx.device_id is None or self.receiver.devices(ctx.site_id) is None:
            return
        ack = invalid_command_ack(raw.payload, err, self.receiver.source, self.now())
        if ack is not None:
            self.rejected.labels(reason="invalid").inc()
            await ctx.publish(topics.SETPOINT_ACK, ack, device_id=ctx.device_id)

    def now(self) -> datetime:
        """The receiver's time."""
        return self.receiver.now()

    def find_site(self, device_id: str, site_id: str | None) -> str:
        """The site of a REST setpoint (raises 404 / 409 as `HTTPException`)."""
        if site_id is not None:
            devices = self.receiver.devices(site_id)
            if devices is None:
                raise HTTPException(status_code=404, detail=f"site {site_id!r} is not served here")
            if device_id not in devices:
                names = ", ".join(sorted(devices)) or "none"
                raise HTTPException(
                    status_code=404,
                    detail=f"unknown device {device_id!r} on site {site_id!r} (devices: {names})",
                )
            return site_id
        sites = [s for s in self.receiver.sites() if device_id in (self.receiver.devices(s) or ())]
        if not sites:
            raise HTTPException(status_code=404, detail=f"unknown device {device_id!r}")
        if len(sites) > 1:
            raise HTTPException(
                status_code=409,
                detail=f"device {device_id!r} exists on several sites: give site_id=",
            )
        return sites[0]


def serve_setpoints(
    service: Service[Any, Any],
    receiver: SetpointReceiver,
    ack_timeout_s: Callable[[], float] = lambda: 5.0,
    targets: Collection[SetpointTarget] | None = None,
) -> SetpointAnswers:
    """Make `service` a setpoint receiver on the bus and over REST (see the module docstring).

    Args:
        service: the receiving service.
        receiver: its sites, devices and the way to its devices' arbiters.
        ack_timeout_s: how long a REST call waits for the first ack, s (read per call).
        targets: the targets its devices take (None: all); a command for an unknown device
            with another target is left to the site's other receivers.

    Returns:
        The bus side (its `rejected` counter is `derbus_setpoints_rejected_total{reason}`).
    """
    answers = SetpointAnswers(service, receiver, targets)
    service.declare_publishes(topics.SETPOINT_ACK)
    service.on(topics.SETPOINT, on_invalid=answers.on_invalid)(answers.on_setpoint)
    router = APIRouter(tags=["setpoints"])

    @router.post(
        "/devices/{device_id}/setpoints",
        response_model=SetpointAck,
        responses={
            202: {
                "model": SetpointAck,
                "description": "queued: a higher priority holds the device (named)",
            },
            **errors(404, 409, 504),
            422: {
                "description": "rejected (the ack says why) or an invalid body (the field)",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [{"$ref": "#/components/schemas/SetpointAck"}, ERROR_REF]
                        }
                    }
                },
            },
        },
    )
    async def post_setpoint(
        device_id: str,
        body: SetpointRequest,
        _auth: TokenDep,
        response: Response,
        site_id: Annotated[str | None, Query()] = None,
    ) -> SetpointAck:
        """Send a setpoint (the bus contract); answers with its acknowledgement.

        The ack (also published on the bus) is the body: 200 `accepted`, 202 `queued` (naming
        the setpoint that holds the device), 422 `rejected` with the reason. Later acks of the
        setpoint (`superseded`, `expired`) come on the bus only.
        """
        site = answers.find_site(device_id, site_id)
        cmd = body.command(receiver.now())
        future = await receiver.submit(site, device_id, cmd)
        try:
            ack = await asyncio.wait_for(future, ack_timeout_s())
        except TimeoutError as err:
            raise HTTPException(status_code=504, detail="no acknowledgement in time") from err
        response.status_code = REST_STATUS[ack.status]
        return ack

    service.include_router(router)
    return answers


def done(ack: SetpointAck) -> asyncio.Future[SetpointAck]:
    """A future already resolved with `ack` (for receivers that answer at once)."""
    future: asyncio.Future[SetpointAck] = asyncio.get_running_loop().create_future()
    future.set_result(ack)
    return future
