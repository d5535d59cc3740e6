"""``POST /v1/detect``: an uploaded image -> detections (micro-batched), optionally filed as cases."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone, tzinfo
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipeline.cases import GeoPoint, PlausibleTime, Violation
from pipeline.decode import FORMAT_NAMES, HEIF_SUPPORT, decode_image, probe_image, read_metadata
from pipeline.detections import Detections
from pipeline.photos import find_violations, photo_violations
from serve.auth import GRANTS, KeyFirstRoute, require
from serve.routes.cases import ERRORS
from serve.schemas import DetectionOut, DetectOut, IngestResult, Problem
from serve.store import TEXT_LIMITS, Actor

router = APIRouter(prefix="/v1", tags=["detect"], route_class=KeyFirstRoute)
#: Media types taken as an image upload (HEIC/HEIF, as iPhones send photos, when pillow-heif is installed).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp") + (
    ("image/heic", "image/heif") if HEIF_SUPPORT else ()
)
#: What a 415 says is accepted: the image types and raw bytes (sniffed from the content).
ACCEPTED = f"{', '.join(IMAGE_TYPES)} or application/octet-stream"
FIELD = "image"


async def upload_bytes(request: Request) -> tuple[bytes, str]:
    """The uploaded image: multipart field ``image``, or the raw body with an image content type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # malformed multipart
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, f"multipart body needs a file field named '{FIELD}'")
        part_type = (upload.content_type or "").lower()
        if part_type and part_type not in (*IMAGE_TYPES, "application/octet-stream"):
            raise HTTPException(415, f"'{FIELD}' is {part_type}; send {FORMAT_NAMES} ({ACCEPTED})")
        return await upload.read(), upload.filename or FIELD
    if ctype in IMAGE_TYPES or ctype == "application/octet-stream":
        return await request.body(), "body"
    raise HTTPException(
        415,
        f"unsupported content type {ctype or '(none)'}: send multipart/form-data with "
        f"an '{FIELD}' file, or the image bytes ({FORMAT_NAMES}) as {ACCEPTED}",
    )


#: The upload as OpenAPI describes it (the route reads the body itself, to take both forms).
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FIELD],
                "properties": {FIELD: {"type": "string", "format": "binary", "description": "The photo"}},
            }
        },
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in (*IMAGE_TYPES, "application/octet-stream")},
    },
}


@router.post(
    "/detect",
    response_model=DetectOut,
    responses={**ERRORS, 503: {"model": Problem, "description": "The service runs without a model"}},
    summary="Detect objects in an uploaded image",
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def detect(
    request: Request,
    actor: Annotated[Actor, Depends(require("detect"))],
    file: Annotated[bool, Query(description="File the violations found as cases (needs an ingest key)")] = False,
    tile: Annotated[bool, Query(description="Sliced inference for small objects in large images")] = False,
    source_name: Annotated[
        str | None, Query(max_length=TEXT_LIMITS["source_name"], description="Photo name for filed cases")
    ] = None,
    lat: Annotated[
        float | None, Query(ge=-90, le=90, description="Where the photo was taken (default: its EXIF GPS position)")
    ] = None,
    lon: Annotated[
        float | None, Query(ge=-180, le=180, description="Where the photo was taken (default: its EXIF GPS position)")
    ] = None,
    parking_anywhere: Annotated[
        bool, Query(description="File every vehicle as illegal parking (a photo has no zones), as the audit's option")
    ] = False,
    file_time: Annotated[
        PlausibleTime | None,
        Query(
            description="The photo file's time (ISO 8601; without an offset: the service's time zone): when it was "
            "taken if its EXIF has no capture time, as `streetwatch audit` takes it (default: the upload time)"
        ),
    ] = None,
) -> DetectOut:
    state = request.app.state
    limits = state.config.limits
    if file and "ingest" not in GRANTS[actor.role]:
        raise HTTPException(403, f"filing cases needs an ingest or admin key; '{actor.name}' is {actor.role}")
    if (lat is None) != (lon is None):
        raise HTTPException(422, "give both lat and lon, or neither")
    if not state.detector.loaded:
        raise HTTPException(503, "this service runs without a model")
    data, name = await upload_bytes(request)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"image too large: {len(data):,} bytes (limit {limits.max_upload_bytes:,})")
    _, w, h = probe_image(data, name, max_pixels=1 << 62)  # ImageReadError -> 422 with the reason
    if w * h > limits.max_pixels or max(w, h) > limits.max_side:
        raise HTTPException(
            413, f"image too large: {w}x{h} pixels (limits: {limits.max_pixels:,} pixels, {limits.max_side} per side)"
        )
    image = await run_in_threadpool(decode_image, data, name, limits.max_pixels)
    holder = state.detector
    if tile:
        detector = holder.detector
        dets, version = await run_in_threadpool(detector.detect, image, True), detector.version
    elif state.batcher is not None:
        dets, version = await state.batcher.detect(image)
    else:
        detector = holder.detector
        dets, version = (await run_in_threadpool(detector.detect_batch, [image]))[0], detector.version
    cases: list[IngestResult] = []
    if file:
        found = await run_in_threadpool(
            violations_in_upload,
            image,
            data,
            dets,
            version,
            state.config.tz,
            parking_anywhere,
            source_name or (shorten(name, TEXT_LIMITS["source_name"]) if name not in (FIELD, "body") else None),
            lat,
            lon,
            file_time,
        )
        for violation in found:
            r = await run_in_threadpool(state.store.ingest, violation, actor)
            state.metrics.ingested.labels(r.outcome).inc()
            cases.append(IngestResult(case_id=r.case_id, created=r.created, outcome=r.outcome, status=r.status))
    return DetectOut(
        width=image.shape[1],
        height=image.shape[0],
        model_version=version,
        detections=[DetectionOut.model_validate(r) for r in dets.to_records()],
        cases=cases,
    )


def shorten(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` characters in the middle, so that its start and its end (the number a
    camera gives a photo, the suffix) are still there to recognise it by."""
    if len(name) <= limit:
        return name
    tail = limit // 4
    return f"{name[: limit - tail - 1]}…{name[-tail:]}"


def violations_in_upload(
    image: np.ndarray,
    data: bytes,
    dets: Detections,
    version: str,
    tz: tzinfo,
    parking_anywhere: bool,
    source_name: str | None,
    lat: float | None,
    lon: float | None,
    file_time: datetime | None = None,
) -> list[Violation]:
    """The violations of an uploaded photo, exactly as ``streetwatch audit`` files them (same keys, so a
    photo filed both ways is one case): taken when its EXIF says, else at its file time (to the second, as
    the audit reads it) if the client sent one, else now; where the request or its EXIF GPS says."""
    meta = read_metadata(data)
    if file_time is not None:
        file_time = (file_time if file_time.tzinfo else file_time.replace(tzinfo=tz)).replace(microsecond=0)
    taken_at = meta.capture_time(tz)[0] or file_time or datetime.now(timezone.utc)
    if lat is not None and lon is not None:
        location = GeoPoint(lat=lat, lon=lon)
    else:
        location = GeoPoint(lat=meta.location[0], lon=meta.location[1]) if meta.location else None
    sha = hashlib.sha256(data).hexdigest()
    return photo_violations(
        image,
        dets,
        find_violations(dets, sha, parking_anywhere),
        sha256=sha,
        model_version=version,
        taken_at=taken_at,
        source_name=source_name,
        location=location,
    )
