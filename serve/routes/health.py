"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serve.metrics import camera_states

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable, model loaded, workers running")
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, object] = {"started": bool(state.ready)}
    try:
        checks["database"] = state.store.healthy()
    except Exception as exc:  # the answer is "not ready", with the reason
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["model"] = state.detector.detector.version if state.detector.loaded else None
    follower = getattr(state, "follower", None)
    checks["model_follow"] = follower.status() if follower is not None else "off (pinned model or disabled)"
    dispatcher = getattr(state, "dispatcher", None)
    checks["webhook"] = dispatcher.status() if dispatcher is not None else "off (no webhook url)"
    pruner = getattr(state, "retention", None)
    checks["retention"] = pruner.status() if pruner is not None else "off (retention.closed_for_days not set)"
    if state.cameras is not None:
        try:
            checks["cameras"] = dict(camera_states(state.cameras.status()))
        except Exception as exc:
            checks["cameras"] = f"status failed: {exc}"
    ok = checks["started"] is True and checks["database"] is True
    ok = ok and (dispatcher is None or dispatcher.running)  # events would wait for ever without it
    if state.config.load_detector:
        ok = ok and checks["model"] is not None
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
