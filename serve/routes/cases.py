"""The case queue: ingest (stream workers, audits), list, get, lifecycle actions, history, evidence."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse

from models.classes import VIOLATION_TYPES
from pipeline.cases import PlausibleTime, Violation
from pipeline.decode import ImageReadError, probe_image
from serve.auth import KeyFirstRoute, require
from serve.schemas import (
    CaseOut,
    CasePage,
    DispatchIn,
    EvidenceOut,
    HistoryOut,
    IngestResult,
    NoteIn,
    Problem,
    ReopenIn,
    ReviewIn,
    Status,
)
from serve.store import Actor, CaseFilter, CaseStore, local_time

router = APIRouter(prefix="/v1", tags=["cases"], route_class=KeyFirstRoute)
ERRORS = {
    401: {"model": Problem, "description": "No or invalid API key"},
    403: {"model": Problem, "description": "The key's role may not do this"},
    404: {"model": Problem, "description": "No such case"},
    409: {
        "model": Problem,
        "description": "The case's status does not allow this action, or it changed after the given version",
    },
    422: {"model": Problem, "description": "Invalid request"},
    400: {"model": Problem, "description": "Malformed body (JSON, multipart) or headers"},
    413: {"model": Problem, "description": "Body over the service's size limit"},
    415: {"model": Problem, "description": "Body of a content type this endpoint does not take"},
}

#: A case number as the database can hold it (anything else is a 422, not a database error).
CaseId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Case number")]
Ingester = Annotated[Actor, Depends(require("ingest"))]
Reader = Annotated[Actor, Depends(require("read"))]
Reviewer = Annotated[Actor, Depends(require("review"))]


def store_of(request: Request) -> CaseStore:
    return request.app.state.store


def _after_change(request: Request) -> None:
    dispatcher = request.app.state.dispatcher
    if dispatcher is not None:
        dispatcher.wake()


@router.post(
    "/cases/ingest",
    response_model=IngestResult,
    responses={**ERRORS, 201: {"model": IngestResult}},
    summary="File a violation (idempotent per key)",
)
def ingest(violation: Violation, request: Request, response: Response, actor: Ingester) -> IngestResult:
    """A violation from a stream worker or a photo audit. A repeat of its ``key`` updates the same case
    (200, ``created: false``); the same thing at the same place within the dedup window is added to the
    open case as an occurrence; anything else opens a case (201)."""
    limits = request.app.state.config.limits
    if len(violation.evidence) > limits.max_evidence_images:
        raise HTTPException(
            422, f"too many evidence images: {len(violation.evidence)} (limit {limits.max_evidence_images})"
        )
    for i, image in enumerate(violation.evidence):
        try:
            fmt, w, h = probe_image(image.jpeg, f"evidence[{i}]", max_pixels=limits.max_pixels)
        except ImageReadError as exc:
            raise HTTPException(422, str(exc)) from None
        if fmt != "jpeg":
            raise HTTPException(415, f"evidence[{i}]: evidence must be JPEG, got {fmt}")
        if max(w, h) > limits.max_side:
            raise HTTPException(413, f"evidence[{i}]: {w}x{h} exceeds the {limits.max_side}-pixel side limit")
    result = store_of(request).ingest(violation, actor)
    request.app.state.metrics.ingested.labels(result.outcome).inc()
    response.status_code = 201 if result.created else 200
    return IngestResult(case_id=result.case_id, created=result.created, outcome=result.outcome, status=result.status)


@router.get("/cases", response_model=CasePage, responses=ERRORS, summary="List cases with filters")
def list_cases(
    request: Request,
    actor: Reader,
    status: Annotated[list[Status] | None, Query(description="Only these statuses (repeatable)")] = None,
    type: Annotated[list[str] | None, Query(description="Only these violation types (repeatable)")] = None,
    camera: Annotated[str | None, Query(description="Only this camera / photo source id")] = None,
    department: Annotated[str | None, Query(description="Only cases dispatched to this department")] = None,
    since: Annotated[PlausibleTime | None, Query(description="First seen at or after (ISO 8601)")] = None,
    until: Annotated[PlausibleTime | None, Query(description="First seen before (ISO 8601)")] = None,
    overdue: Annotated[bool | None, Query(description="Only (true) or no (false) overdue cases")] = None,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Skip this many cases")] = 0,
    limit: Annotated[int, Query(ge=1, description="Page size")] = 50,
) -> CasePage:
    config = request.app.state.config
    if limit > config.limits.max_page_size:
        raise HTTPException(422, f"limit {limit} exceeds the page size limit {config.limits.max_page_size}")
    for t in type or []:
        if t not in VIOLATION_TYPES:
            raise HTTPException(422, f"unknown violation type {t!r}; known: {', '.join(VIOLATION_TYPES)}")
    tz = config.tz
    since = since.replace(tzinfo=tz) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=tz) if until and until.tzinfo is None else until
    flt = CaseFilter(tuple(status or ()), tuple(type or ()), camera, department, since, until, overdue)
    items, total = store_of(request).list_cases(flt, offset, limit)
    return CasePage(items=items, total=total, offset=offset, limit=limit)


@router.get("/cases/{case_id}", response_model=CaseOut, responses=ERRORS, summary="One case")
def get_case(case_id: CaseId, request: Request, actor: Reader) -> CaseOut:
    return store_of(request).get_case(case_id)


@router.get(
    "/cases/{case_id}/history",
    response_model=list[HistoryOut],
    responses=ERRORS,
    summary="Every change of a case: who, when, what",
)
def history(case_id: CaseId, request: Request, actor: Reader) -> list[HistoryOut]:
    return store_of(request).history(case_id)


@router.get(
    "/cases/{case_id}/evidence",
    response_model=list[EvidenceOut],
    responses=ERRORS,
    summary="Evidence pictures of a case",
)
def case_evidence(case_id: CaseId, request: Request, actor: Reader) -> list[EvidenceOut]:
    return store_of(request).get_case(case_id).evidence


@router.post(
    "/cases/{case_id}/review",
    response_model=CaseOut,
    responses=ERRORS,
    summary="Confirm, dismiss as false positive, or correct the class",
)
def review(case_id: CaseId, body: ReviewIn, request: Request, actor: Reviewer) -> CaseOut:
    case = store_of(request).review(
        case_id, body.action, actor, body.type, body.detector_class, body.note, body.version
    )
    _after_change(request)
    return case


@router.post(
    "/cases/{case_id}/dispatch",
    response_model=CaseOut,
    responses=ERRORS,
    summary="Hand to a department with a deadline (责任落实 / 限期整改)",
)
def dispatch(case_id: CaseId, body: DispatchIn, request: Request, actor: Reviewer) -> CaseOut:
    case = store_of(request).dispatch(case_id, body.department, body.deadline, actor, body.note, body.version)
    _after_change(request)
    return case


@router.post(
    "/cases/{case_id}/resolve",
    response_model=CaseOut,
    responses=ERRORS,
    summary="The department rectified the violation",
)
def resolve(case_id: CaseId, body: NoteIn, request: Request, actor: Reviewer) -> CaseOut:
    case = store_of(request).resolve(case_id, actor, body.note, body.version)
    _after_change(request)
    return case


@router.post("/cases/{case_id}/close", response_model=CaseOut, responses=ERRORS, summary="Close a resolved case")
def close(case_id: CaseId, body: NoteIn, request: Request, actor: Reviewer) -> CaseOut:
    case = store_of(request).close(case_id, actor, body.note, body.version)
    _after_change(request)
    return case


@router.post(
    "/cases/{case_id}/reopen",
    response_model=CaseOut,
    responses=ERRORS,
    summary="Reopen a dismissed, resolved or closed case",
)
def reopen(case_id: CaseId, body: ReopenIn, request: Request, actor: Reviewer) -> CaseOut:
    case = store_of(request).reopen(case_id, actor, body.note, body.version)
    _after_change(request)
    return case


@router.get(
    "/evidence/{evidence_id}",
    response_class=FileResponse,
    responses={**ERRORS, 410: {"model": Problem, "description": "The picture was removed by the retention policy"}},
    summary="An evidence JPEG by its SHA-256",
)
def evidence(evidence_id: str, request: Request, actor: Reader) -> Response:
    """The picture, revalidated by the browser on every use (its id is its ETag, so a repeat costs a 304): a
    picture the retention policy removed, or a signed-out reader, is not served from a browser's cache."""
    store = store_of(request)
    known, pruned = store.evidence_status(evidence_id) if store.evidence.valid_id(evidence_id) else (False, None)
    if pruned is not None:
        when = local_time(pruned, request.app.state.config.tz)
        raise HTTPException(410, f"evidence {evidence_id} was removed by the retention policy on {when}")
    path = store.evidence.path(evidence_id)  # only 64 hex digits reach the file system
    if not known:
        raise HTTPException(404, f"no evidence {evidence_id}")
    etag = f'"{evidence_id}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if not_modified(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="image/jpeg", headers=headers)


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag`` (RFC 9110 13.1.2, weak comparison): ``*``, or a
    list of entity tags, each maybe weak (``W/"..."``), one of them ``etag``; a tag that merely contains it
    does not."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
