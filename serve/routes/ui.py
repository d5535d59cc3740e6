"""The review page: server-rendered HTML (Jinja2) with a little JavaScript, no build step.

A reviewer signs in once with a reviewer (or admin) key. The key stays on the server: signing in opens a
session in the store, whose random token goes in an HttpOnly, SameSite=Strict cookie that the API accepts for
the key (like a Bearer header). Signing out deletes the session, so a copy of the cookie is refused too; so does
revoking the key, and the session expires ``session_hours`` after signing in. Buttons call the JSON API.
"""

from __future__ import annotations

import hashlib
import math
import mimetypes
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from models.classes import CLASS_NAMES, DETECTOR_CLASSES, VIOLATIONS
from pipeline.cases import plausible_time
from serve.auth import COOKIE, GRANTS, same_origin
from serve.lifecycle import ASSIGNED_STATUSES, STATUSES
from serve.routes.cases import not_modified
from serve.routes.stats import date_range
from serve.schemas import KeyOut
from serve.store import CaseFilter, CaseNotFound

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
STATIC_DIR = UI_DIR / "static"
TEMPLATES_DIR = UI_DIR / "templates"
router = APIRouter(tags=["ui"], include_in_schema=False)
PAGE_SIZE = 24

ACTION_LABELS = {
    "confirm": ("确认", "Confirm"),
    "dismiss": ("误报", "Dismiss"),
    "relabel": ("改类", "Relabel"),
    "dispatch": ("派遣", "Dispatch"),
    "resolve": ("已处置", "Resolve"),
    "close": ("结案", "Close"),
    "reopen": ("重新打开", "Reopen"),
}


def load_templates(directory: Path) -> Jinja2Templates:
    """Every template in ``directory``, read and compiled now, and kept: the pages never read the files again,
    so files changed or removed under a running service (a deploy) break none of them and no page mixes old and
    new templates; the service shows new ones once restarted. A template that does not compile stops the start."""
    sources = {
        path.relative_to(directory).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
    env = jinja2.Environment(loader=jinja2.DictLoader(sources), autoescape=jinja2.select_autoescape())
    for name in sources:
        env.get_template(name)  # compiled into the environment's cache
    return Jinja2Templates(env=env)


@dataclass(frozen=True)
class Asset:
    """A static file of the review page (style sheet, script, icon) as read at start."""

    data: bytes
    media_type: str
    etag: str


def load_static(directory: Path) -> dict[str, Asset]:
    """The static files in ``directory``, read now and kept, as the templates are (:func:`load_templates`): a page
    never gets a script or style sheet of another release than its own templates."""
    assets = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            data = path.read_bytes()
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            assets[path.name] = Asset(data, media_type, f'"{hashlib.sha256(data).hexdigest()[:32]}"')
    return assets


def current_user(request: Request) -> KeyOut | None:
    """The signed-in reviewer, if the session cookie's session is in force for a reviewer or admin key."""
    token = request.cookies.get(COOKIE)
    record = request.app.state.store.verify_session(token) if token else None
    return record if record is not None and "review" in GRANTS[record.role] else None


def to_login(request: Request) -> RedirectResponse:
    """To the sign-in page, and back here after it (the sign-in page says when the session went stale)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303)


def render(request: Request, name: str, user: KeyOut | None, **context: Any) -> HTMLResponse:
    config = request.app.state.config
    tz = config.tz

    def local(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
        return value.astimezone(tz).strftime(fmt) if value else "—"

    def shown(value: Any) -> Any:
        """A history detail as the page shows it: a time (a deadline, ISO text in UTC) in the local zone."""
        when = iso_time(value)
        return value if when is None else local(when, "%Y-%m-%d %H:%M" if when.second == 0 else "%Y-%m-%d %H:%M:%S")

    response = request.app.state.templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "violations": VIOLATIONS,
            "statuses": STATUSES,
            "assigned": ASSIGNED_STATUSES,  # the department shown as the case's own only in these
            "classes": DETECTOR_CLASSES,
            "sources_of": {name: list(v.sources) for name, v in VIOLATIONS.items()},  # the classes of each type
            "action_labels": ACTION_LABELS,
            "local": local,
            "shown": shown,
            "tzname": config.timezone,
            **context,
        },
    )
    response.headers["Cache-Control"] = "no-store"  # Back after an action or sign-out shows no stale page
    return response


def iso_time(value: Any) -> datetime | None:
    """The time ``value`` is when it is ISO text of a time with a zone (2026-12-03T00:00:00+00:00), else None."""
    if not isinstance(value, str) or len(value) < 16 or value[10] not in "T ":
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A page saying what went wrong, for a person who followed a stale link or edited the address."""
    response = render(request, "missing.html", current_user(request), message=message)
    response.status_code = status
    return response


@router.get("/static/{name}")
def static_file(request: Request, name: str) -> Response:
    """A static file as read at start; browsers check theirs (ETag) before using it, so after a restart
    with new files no page runs an old script."""
    asset = request.app.state.static.get(name)
    if asset is None:
        raise HTTPException(404, f"no static file {name}")
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache"}
    if not_modified(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.data, media_type=asset.media_type, headers=headers)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/cases", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/ui/cases") -> HTMLResponse:
    """The sign-in form; a session cookie whose session ended (expired, its key revoked) is the reason it is shown. It
    shows no text from the address (an ``?error=`` would let anyone's link put their words on this page): what
    it says the service found out itself, here or in the answer to the form (:func:`login`)."""
    stale = request.cookies.get(COOKIE) is not None and current_user(request) is None
    expired = "您的登录已失效，请重新登录 Your session is no longer valid (expired, or its key revoked): sign in again"
    return render(request, "login.html", None, next=_safe_next(next), error=expired if stale else None)


@router.post("/ui/login", dependencies=[Depends(same_origin)])
def login(request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = "/ui/cases") -> Response:
    record = request.app.state.store.verify_key(key.strip())
    if record is None or "review" not in GRANTS[record.role]:
        reason = "密钥无效 Invalid or revoked key" if record is None else "需要审核员密钥 A reviewer key is needed"
        return render(request, "login.html", None, next=_safe_next(next), error=reason)
    lifetime = timedelta(hours=request.app.state.config.session_hours)
    earlier = request.cookies.get(COOKIE)  # signing in again: the browser's earlier session ends
    token = request.app.state.store.create_session(record.id, lifetime, replaces=earlier)  # the key stays here
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=over_https(request))
    return response


def over_https(request: Request) -> bool:
    """Whether the browser reaches the service over HTTPS: the request's own scheme, or the configured public
    URL (behind a proxy that ends TLS the service sees plain HTTP). The session cookie is then Secure: never
    sent over a plain-HTTP request to the same host."""
    public = request.app.state.config.public_url or ""
    return request.url.scheme == "https" or public.lower().startswith("https://")


@router.get("/ui/logout", response_class=HTMLResponse)
def logout_page(request: Request) -> HTMLResponse:
    """The sign-out address typed in or followed: a page whose button signs out (a GET changes nothing, so
    another site's link or image cannot sign a reviewer out)."""
    user = current_user(request)
    signed_in = request.cookies.get(COOKIE) is not None  # a stale session too: its cookie can be cleared
    return render(request, "logout.html", None, signed_in=signed_in, who=user.name if user else None)


@router.post("/ui/logout", dependencies=[Depends(same_origin)])
def logout(request: Request) -> RedirectResponse:
    """Sign out: the session ends in the store (a copy of the cookie is refused from now on) and the browser
    forgets its cookie."""
    token = request.cookies.get(COOKIE)
    if token:
        request.app.state.store.end_session(token)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=over_https(request))  # as it was set
    return response


def _safe_next(target: str) -> str:
    """Only review pages: a login link cannot send the reviewer elsewhere (another site, the raw API)."""
    return target if target.startswith("/ui/") and "\\" not in target else "/ui/cases"


@router.get("/ui/cases", response_class=HTMLResponse)
def cases_page(
    request: Request,
    status: Annotated[str, Query()] = "",
    type: Annotated[str, Query()] = "",
    camera: Annotated[str, Query()] = "",
    department: Annotated[str, Query()] = "",
    overdue: Annotated[str, Query()] = "",
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
) -> Response:
    """The case list, filtered as GET /v1/cases: status, type, camera, department, overdue (true)."""
    user = current_user(request)
    if user is None:
        return to_login(request)
    store = request.app.state.store
    status = status if status in STATUSES else ""
    type = type if type in VIOLATIONS else ""
    late = "true" if overdue.strip().lower() in ("true", "1", "on", "yes") else ""  # a checkbox, a link
    flt = CaseFilter(
        status=(status,) if status else (),
        type=(type,) if type else (),
        source_id=camera or None,
        department=department or None,
        overdue=True if late else None,
    )
    items, total = store.list_cases(flt, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    chosen = {"status": status, "type": type, "camera": camera, "department": department, "overdue": late}
    query = {k: v for k, v in chosen.items() if v}
    if page > pages:  # an old link, or cases closed meanwhile: the last page there is
        return RedirectResponse(f"/ui/cases?{urlencode({**query, 'page': pages})}", status_code=303)
    return render(
        request,
        "cases.html",
        user,
        items=items,
        total=total,
        page=page,
        pages=pages,
        filters=query,
        query=lambda **kw: urlencode({**query, **kw}),
        back=f"/ui/cases?{urlencode({**query, 'page': page})}" if query or page > 1 else None,  # a case's way back
        counts=store.counts_by_status(flt),  # the chips count within the type, source and department chosen
        overdue_count=sum(store.counts_by_status(replace(flt, overdue=True)).values()),
        sources=store.sources(),
        departments=sorted({*store.departments(), *([department] if department else [])}),
    )


@router.get("/ui/cases/{case_id}", response_class=HTMLResponse)
def case_page(
    request: Request, case_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], back: str = "/ui/cases"
) -> Response:
    """A case; ``back``: the filtered list it was opened from (only ever a /ui/cases address)."""
    user = current_user(request)
    if user is None:
        return to_login(request)
    store = request.app.state.store
    try:
        case = store.get_case(case_id)
    except CaseNotFound as exc:  # a page, not the API's JSON: a person followed a stale link
        return error_page(request, 404, f"{exc} (案件不存在)")
    config = request.app.state.config
    tz = config.tz
    proposed = datetime.now(tz) + timedelta(hours=config.default_deadline_hours)
    if case.deadline is not None and case.deadline > datetime.now(tz):  # re-dispatch: the deadline in force
        proposed = case.deadline.astimezone(tz)
    deadline = proposed.strftime("%Y-%m-%dT%H:%M")
    offset = proposed.strftime("%z")  # the deadline is entered in the service's zone, whatever the browser's
    kept = [e for e in case.evidence if e.pruned_at is None] or case.evidence  # all pruned: the page says so
    frame = next((e for e in kept if e.kind == "frame"), None)
    frame = frame or next((e for e in kept if e.kind == "crop"), None)  # filed with a crop only
    return render(
        request,
        "case.html",
        user,
        case=case,
        frame=frame,
        history=store.history(case_id),
        keys=store.occurrence_keys(case_id),
        departments=config.departments,
        default_deadline=deadline,
        deadline_offset=f"{offset[:3]}:{offset[3:]}",
        class_names=CLASS_NAMES,
        back=list_address(back),
    )


def list_address(target: str) -> str:
    """``target`` when it is the case list with its filters (/ui/cases?type=…), else the plain list: a link
    handed to a case page cannot lead anywhere else."""
    parts = urlsplit(target)
    plain = not parts.scheme and not parts.netloc and not parts.fragment and parts.path == "/ui/cases"
    return target if plain and "\\" not in target else "/ui/cases"


def is_date(text: str) -> bool:
    """Whether ``text`` names a day (2026-11-10, the form's), not a time in it (2026-11-10T08)."""
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


@router.get("/ui/stats", response_class=HTMLResponse)
def stats_page(request: Request, since: str = "", until: str = "") -> Response:
    user = current_user(request)
    if user is None:
        return to_login(request)
    tz = request.app.state.config.tz
    unreadable = []

    def parse(text: str, name: str) -> datetime | None:
        """The form sends dates; a hand-edited address may hold times, with or without a zone."""
        try:
            return plausible_time(datetime.fromisoformat(text)) if text else None
        except ValueError:  # said on the page; the other date still counts
            unreadable.append(f"{name} {text!r}")
            return None

    start, end = parse(since, "since"), parse(until, "until")
    errors = [f"日期无法识别 Unreadable date: {', '.join(unreadable)} (YYYY-MM-DD)"] if unreadable else []
    day = {name: timedelta(days=1 if is_date(text) else 0) for name, text in (("since", since), ("until", until))}
    if end is not None:  # a date (the form's) counts up to the end of that day; a time typed in, up to it
        end += day["until"]
    start, end = date_range(request, start, end)  # the service's zone for dates without one
    if end <= start:  # the wrong way round: the range they span
        start, end = end - day["until"], start + day["since"]
    if end <= start:
        errors.append(f"日期范围为空 Empty range: until {until!r} is not after since {since!r}; the last 30 days shown")
        start, end = date_range(request, None, None)
    stats = request.app.state.store.stats(start, end, tz)
    return render(
        request,
        "stats.html",
        user,
        stats=stats,
        since=start.astimezone(tz).date().isoformat(),
        until=(end - timedelta(seconds=1)).astimezone(tz).date().isoformat(),
        bars=bar_chart,
        columns=column_chart,
        error="; ".join(errors) or None,
    )


def bar_chart(counts: list, width: int = 560, row: int = 26, label_w: int = 230) -> dict:
    """Geometry of a horizontal bar chart (inline SVG in the template)."""
    top = max((c.count for c in counts), default=0) or 1
    span = width - label_w - 48
    bars = [
        {"y": i * row, "w": max(2.0, c.count / top * span) if c.count else 0, "label": c.label, "count": c.count}
        for i, c in enumerate(counts)
    ]
    return {"bars": bars, "width": width, "height": max(row, len(bars) * row), "label_w": label_w, "row": row}


def column_chart(counts: list, width: int = 880, height: int = 160) -> dict:
    """Geometry of a column chart over days (inline SVG in the template)."""
    top = max((c.count for c in counts), default=0) or 1
    n = max(1, len(counts))
    step = width / n
    cols = [
        {
            "x": i * step,
            "w": max(1.0, step * 0.7),
            "h": c.count / top * (height - 30),
            "label": c.label,
            "count": c.count,
            "tick": i % max(1, n // 10) == 0,
        }
        for i, c in enumerate(counts)
    ]
    return {"cols": cols, "width": width, "height": height, "top": top}
