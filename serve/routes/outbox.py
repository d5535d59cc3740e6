"""The webhook outbox (admin only): what is waiting, delivered or given up, and trying failed events again
once the receiving case system is fixed."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from serve.auth import KeyFirstRoute, require
from serve.routes.cases import ERRORS
from serve.schemas import OutboxEventOut, OutboxRetried, OutboxRetryIn
from serve.store import Actor

router = APIRouter(prefix="/v1/outbox", tags=["outbox"], route_class=KeyFirstRoute)
Admin = Annotated[Actor, Depends(require("admin"))]


@router.get("", response_model=list[OutboxEventOut], responses=ERRORS, summary="Webhook events, newest first")
def list_events(
    request: Request,
    actor: Admin,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query(description="Only this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many events")] = 100,
) -> list[OutboxEventOut]:
    return request.app.state.store.outbox_events(status, limit)


@router.post(
    "/retry", response_model=OutboxRetried, responses=ERRORS, summary="Try failed (or pending) webhook events now"
)
def retry_events(body: OutboxRetryIn, request: Request, actor: Admin) -> OutboxRetried:
    retried = request.app.state.store.retry_failed_events(actor, body.ids, pending=body.pending)
    dispatcher = request.app.state.dispatcher
    if retried and dispatcher is not None:
        dispatcher.wake()
    return OutboxRetried(retried=retried)
