"""API keys on requests: ``Authorization: Bearer KEY`` (or the review page's session cookie, which holds a
session token standing for the key it signed in with: :meth:`~serve.store.CaseStore.verify_session`), roles.

Roles: ``ingest`` files violations and runs detection (stream workers, audits); ``reviewer`` reads
cases and moves them through the lifecycle; ``admin`` does everything and manages keys.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from serve.schemas import KeyOut
from serve.store import Actor

#: The review page's session cookie: a sign-in's token, never the key (the name is from when it held the key: a
#: browser's old cookie is refused as stale and overwritten at its next sign-in).
COOKIE = "streetwatch_key"
#: What each role may do.
GRANTS: dict[str, set[str]] = {
    "ingest": {"ingest", "detect"},
    "reviewer": {"read", "review", "detect"},
    "admin": {"ingest", "detect", "read", "review", "admin"},
}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: Declares the Bearer key in the OpenAPI schema (the docs page's Authorize button); the key itself is read
#: by :func:`presented_key`, which also takes the review page's session cookie.
BEARER = HTTPBearer(auto_error=False, description="An API key: `streetwatch keys create --role ROLE`")


def presented_key(request: Request) -> tuple[str | None, bool]:
    """The key a request carries, or else its session cookie's token, and whether it is the latter."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                401, "malformed Authorization header: expected 'Bearer KEY'", headers={"WWW-Authenticate": "Bearer"}
            )
        return token.strip(), False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def authenticate(request: Request, _declared: Annotated[object, Depends(BEARER)] = None) -> KeyOut:
    """The key record of the request; 401 when there is none or it is not valid."""
    checked = getattr(request.state, "key", None)
    if checked is not None:  # checked before the body was read (KeyFirstRoute)
        return checked
    key, from_cookie = presented_key(request)
    if key is None:
        raise HTTPException(
            401, "an API key is required: send 'Authorization: Bearer KEY'", headers={"WWW-Authenticate": "Bearer"}
        )
    store = request.app.state.store
    record = store.verify_session(key) if from_cookie else store.verify_key(key)
    if record is None:
        reason = (
            "session ended (signed out, expired, or its key revoked)" if from_cookie else "invalid or revoked API key"
        )
        raise HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})
    if from_cookie and request.method in UNSAFE_METHODS:
        same_origin(request)
    request.state.key = record
    return record


def same_origin(request: Request) -> None:
    """Cookie-authenticated changes, and signing in and out, must come from the review page itself (no
    cross-site requests)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # not a URL at all ("http://[::1"): no page of this site sent it
        netloc = None
    if netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site request refused")


def require(permission: str) -> Callable[..., Actor]:
    """A dependency that admits keys whose role grants ``permission`` and yields the acting :class:`Actor`."""

    def dependency(record: Annotated[KeyOut, Depends(authenticate)]) -> Actor:
        return permit(record, permission)

    dependency.__name__ = f"require_{permission}"
    dependency.permission = permission  # type: ignore[attr-defined]  # found by KeyFirstRoute
    return dependency


def permit(record: KeyOut, permission: str) -> Actor:
    """The acting :class:`Actor` of a key whose role grants ``permission``; 403 otherwise."""
    if permission not in GRANTS[record.role]:
        allowed = " or ".join(r for r, g in GRANTS.items() if permission in g)
        raise HTTPException(403, f"the {record.role} key '{record.name}' may not {permission}; needs {allowed}")
    return Actor(record.name, record.role)


def required_permission(dependant: Dependant) -> str | None:
    """The permission that a route's dependencies :func:`require`, if any."""
    for sub in dependant.dependencies:
        found = getattr(sub.call, "permission", None) or required_permission(sub)
        if found is not None:
            return found
    return None


class KeyFirstRoute(APIRoute):
    """A route that checks the key, and that its role may do this, before it reads the request's body, and
    then that a JSON body is UTF-8 (:func:`require_utf8_json`).

    FastAPI reads a JSON body before it solves any dependency, so a malformed one was refused (400) before a
    missing key (401): a client without a valid key learnt how its body was read. Here a request without one
    is a 401 (a key of another role a 403) whatever its body; a keyed request's body is refused as before.
    The route's own dependency then takes the record found (the key is looked up once)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        permission = required_permission(self.dependant)

        async def key_first(request: Request) -> Response:
            if permission is not None:
                await run_in_threadpool(lambda: permit(authenticate(request), permission))
            await require_utf8_json(request)
            return await handler(request)

        return key_first


async def require_utf8_json(request: Request) -> None:
    """A body FastAPI would read as JSON must be UTF-8 (RFC 8259); 400 saying where it is not. Python's JSON
    reader guesses UTF-16 and UTF-32 and lets encoded surrogates through, and a byte it cannot decode was an
    unexplained 400 ("error parsing the body"): a client learnt nothing, or got a 422 about fields it sent."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        return  # not read as JSON: FastAPI refuses it with its own reason (415)
    body = await request.body()  # kept by the request: FastAPI reads it from there
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(
            400,
            f"the JSON body is not valid UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start} ({exc.reason}); "
            "send JSON encoded as UTF-8",
        ) from None
