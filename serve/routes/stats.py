"""``GET /v1/stats``: the supervision-and-assessment figures (督查考核) over a date range."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from pipeline.cases import PlausibleTime
from serve.auth import KeyFirstRoute, require
from serve.routes.cases import ERRORS
from serve.schemas import StatsOut
from serve.store import Actor

router = APIRouter(prefix="/v1", tags=["stats"], route_class=KeyFirstRoute)


def date_range(request: Request, since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The range asked for, in the service's time zone where no zone is given; default: the last 30 days
    up to the end of today (a ``since`` after today alone: up to the end of its day)."""
    tz = request.app.state.config.tz

    def day_after(t: datetime) -> datetime:
        return (t.astimezone(tz) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=tz)
    if until is None:
        until = day_after(datetime.now(tz)) if since is None else max(day_after(datetime.now(tz)), day_after(since))
    elif until.tzinfo is None:
        until = until.replace(tzinfo=tz)
    if since is None:
        since = until - timedelta(days=30)
    return since, until


@router.get("/stats", response_model=StatsOut, responses=ERRORS, summary="Supervision figures over a date range")
def stats(
    request: Request,
    actor: Annotated[Actor, Depends(require("read"))],
    since: Annotated[
        PlausibleTime | None, Query(description="Start (date or ISO 8601); default: 30 days before until")
    ] = None,
    until: Annotated[
        PlausibleTime | None, Query(description="End, exclusive (date or ISO 8601); default: end of today")
    ] = None,
) -> StatsOut:
    since, until = date_range(request, since, until)
    return request.app.state.store.stats(since, until, request.app.state.config.tz)
