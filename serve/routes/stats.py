"""``GET /v1/stats``: the supervision-and-assessment figures (督查考核) over a date range."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from pipeline.cases import PlausibleTime
from serve.auth import require
from serve.routes.cases import ERRORS
from serve.schemas import StatsOut
from serve.store import Actor

router = APIRouter(prefix="/v1", tags=["stats"])


def date_range(request: Request, since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The range asked for, in the service's time zone where no zone is given; default: the last 30 days."""
    tz = request.app.state.config.tz
    if until is None:
        until = (datetime.now(tz) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    elif until.tzinfo is None:
        until = until.replace(tzinfo=tz)
    if since is None:
        since = until - timedelta(days=30)
    elif since.tzinfo is None:
        since = since.replace(tzinfo=tz)
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
