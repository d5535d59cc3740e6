"""API keys (admin only): list, create (the key is shown once), revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from serve.auth import KeyFirstRoute, require
from serve.routes.cases import ERRORS
from serve.schemas import KeyCreated, KeyCreateIn, KeyOut
from serve.store import Actor

router = APIRouter(prefix="/v1/keys", tags=["admin"], route_class=KeyFirstRoute)
Admin = Annotated[Actor, Depends(require("admin"))]


@router.get("", response_model=list[KeyOut], responses=ERRORS, summary="Every API key's record")
def list_keys(request: Request, actor: Admin) -> list[KeyOut]:
    return request.app.state.store.list_keys()


@router.post("", response_model=KeyCreated, status_code=201, responses=ERRORS, summary="Create an API key")
def create_key(body: KeyCreateIn, request: Request, actor: Admin) -> KeyCreated:
    key, record = request.app.state.store.create_key(body.role, body.name)
    return KeyCreated(**record.model_dump(), key=key)


@router.delete("/{key_id}", response_model=KeyOut, responses=ERRORS, summary="Revoke an API key")
def revoke_key(key_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, actor: Admin) -> KeyOut:
    try:
        return request.app.state.store.revoke_key(key_id, keep_admin=True)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
