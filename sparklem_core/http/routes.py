"""The API's routes under /api/v1: thin over :mod:`sparklem_core.reading.queries`.

Answers that can be large are returned as ``JSONResponse``: their documents hold only
JSON types already, and FastAPI's generic encoding took longer than the query itself
(20,000 latest values). The fleet is written by orjson (:class:`FastJSON`), fifteen
times faster than the standard library at 2.6 MB; the latest values are their stored
JSON texts joined (:func:`sparklem_core.reading.queries.latest`).

Query strings are hostile: every parameter is checked against the plugin's declaration
(an unknown name is a 400 naming it), every value is bound. Blocking database calls run
in FastAPI's thread pool (plain ``def`` routes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from sparklem_core.db.plugin_tables import PluginTable
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.fleet.state import open_registry
from sparklem_core.http.auth import (
    COOKIE,
    Audit,
    Caller,
    Tokens,
    require_admin,
    require_read,
    session_cookie,
)
from sparklem_core.http.errors import ApiError
from sparklem_core.reading import queries
from sparklem_core.reading.catalog import LiveCatalog, ReadError
from sparklem_core.settings.config import Config

Many = Annotated[list[str] | None, Query()]
JSON = "application/json"
Text = Annotated[str | None, Query(max_length=4096)]


@dataclass
class Context:
    """What every request reads through: set once per app by ``create_app``."""

    config: Config
    store: Store
    catalog: LiveCatalog
    audit: Audit

    @cached_property
    def registry(self) -> AgentRegistry:
        """The fleet's registry, made at the first /agents: later ones read only what
        changed (a thread-safe refresh)."""
        return open_registry(self.config, self.store)


class FastJSON(JSONResponse):
    """A JSON answer written by orjson (FastAPI's ORJSONResponse is deprecated): for
    documents of plain JSON types only (no Decimal; a non-finite float becomes null)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def context(request: Request) -> Context:
    return request.app.state.context


def _only(request: Request, allowed: Iterable[str]) -> None:
    """400 naming the first query parameter the endpoint does not know."""
    known = set(allowed)
    for name in request.query_params:
        if name not in known:
            shown = name[:64]
            raise ApiError(400, f"unknown parameter {shown!r}", shown)


def _one(request: Request, name: str) -> str | None:
    """A parameter given at most once: twice is a mistake, not a choice."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"{name} is given {len(values)} times; give it once", name)
    return values[0] if values else None


api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_read)])
public = APIRouter(prefix="/api/v1")


class SessionRequest(BaseModel):
    token: str


@public.post("/session")
def open_session(body: SessionRequest, request: Request, response: Response) -> dict[str, Any]:
    """Check a token and keep it in the HttpOnly session cookie (for EventSource).

    No Path attribute: the browser scopes it to this URL's directory (…/api/v1), which
    still holds when a proxy serves the API under a prefix.
    """
    tokens: Tokens = request.app.state.tokens
    caller = tokens.check(body.token) if len(body.token) <= 4096 else None
    if caller is None:
        raise ApiError(401, "this token is not valid", "token")
    response.set_cookie(
        COOKIE, session_cookie(body.token), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path=None,
    )  # fmt: skip
    return {"admin": caller.admin}


@public.delete("/session")
def close_session(response: Response) -> dict[str, Any]:
    """Forget the session cookie."""
    response.delete_cookie(COOKIE, path=None)
    return {}


@api.get("/plugins")
def plugins(request: Request) -> dict[str, Any]:
    """Every readable plugin with its tables' time, series and value columns, as recorded
    by the processors now (a plugin installed since serve started is listed)."""
    _only(request, ())
    return context(request).catalog.refresh().document()


@api.get("/agents")
def agents(
    request: Request,
    state: Many = None,
    silent: Text = None,
    agent: Many = None,
    limit: Text = None,
    cursor: Text = None,
) -> JSONResponse:
    """The fleet: state, enrollment, last seen, counts, silent flag; filtered; by agent id,
    ``limit`` at a time when given (then ``next`` is the ``cursor`` of the next page)."""
    _only(request, ("state", "silent", "agent", "limit", "cursor"))
    if silent not in (None, "true", "false"):
        raise ApiError(400, "silent must be true or false", "silent")
    limit_text = _one(request, "limit")
    ctx = context(request)
    page = queries.agents(
        ctx.config,
        ctx.store,
        datetime.now(UTC),
        states=state or (),
        silent=silent == "true",
        ids=agent or (),
        limit=None if limit_text is None else queries.parse_limit(limit_text),
        after=_one(request, "cursor"),
        registry=ctx.registry,
    )
    return FastJSON({"agents": page.items, "next": page.next})


READING_PARAMS = ("agent", "from", "to", "limit", "cursor", "table")


@api.get("/readings/{plugin}")
def readings(
    plugin: str,
    request: Request,
    agent: Many = None,
    from_: Annotated[str | None, Query(alias="from", max_length=4096)] = None,
    to: Text = None,
    limit: Text = None,
    cursor: Text = None,
    table: Text = None,
) -> JSONResponse:
    """Without from/to: the latest reading per agent and series; with: the history."""
    ctx = context(request)
    declared, f = _selection(ctx, request, plugin, READING_PARAMS)
    limit_n = queries.parse_limit(_one(request, "limit"))
    if not f.ranged:
        if _one(request, "cursor") is not None:
            raise ApiError(400, "cursor pages a history: give from or to", "cursor")
        items = queries.latest(ctx.store, declared, f, datetime.now(UTC))
        return Response(b'{"latest":[' + ",".join(items).encode() + b"]}", media_type=JSON)
    page = queries.history(ctx.store.engine, declared, f, limit_n, _one(request, "cursor"))
    return JSONResponse({"readings": page.items, "next": page.next})


def _selection(
    ctx: Context, request: Request, plugin: str, fixed: Iterable[str]
) -> tuple[PluginTable, queries.Filters]:
    """The plugin's table and the rows asked for: agents, time range, and every parameter
    not among ``fixed`` as a series key filter (unknown names refused by the query)."""
    declared = ctx.catalog.table(plugin, _one(request, "table"))
    known = set(fixed)
    series = {k: request.query_params.getlist(k) for k in request.query_params if k not in known}
    agents = request.query_params.getlist("agent")
    start, end = _one(request, "from"), _one(request, "to")
    return declared, queries.parse_filters(declared, agents, series, start, end)


AGGREGATE_PARAMS = ("field", "agg", "bucket", "group_by", "agent", "from", "to", "table")


@api.get("/aggregate/{plugin}")
def aggregate(
    plugin: str,
    request: Request,
    field: Text = None,
    agg: Text = None,
    bucket: Text = None,
    group_by: Many = None,
    agent: Many = None,
    from_: Annotated[str | None, Query(alias="from", max_length=4096)] = None,
    to: Text = None,
    table: Text = None,
) -> JSONResponse:
    """``agg`` of ``field`` per group of series keys, per time bucket if asked."""
    ctx = context(request)
    declared, f = _selection(ctx, request, plugin, AGGREGATE_PARAMS)
    field_name, agg_name, bucket_name = (_one(request, n) for n in ("field", "agg", "bucket"))
    groups = queries.aggregate(
        ctx.store.engine, declared, f, field_name, agg_name, bucket_name, group_by or ()
    )
    return JSONResponse(
        {
            "field": field_name,
            "agg": agg_name,
            "bucket": bucket_name,
            "groups": [
                {
                    "key": g.key,
                    "points": [
                        {"t": queries.iso_or_none(p.t), "value": p.value, "count": p.count}
                        for p in g.points
                    ],
                }
                for g in groups
            ],  # fmt: skip
        }
    )


@api.get("/rejections")
def rejections(
    request: Request,
    reason: Many = None,
    agent: Many = None,
    plugin: Many = None,
    from_: Annotated[str | None, Query(alias="from", max_length=4096)] = None,
    to: Text = None,
    limit: Text = None,
    cursor: Text = None,
) -> JSONResponse:
    """Rejected messages, newest first, with counts by reason under the same filters."""
    _only(request, ("reason", "agent", "plugin", "from", "to", "limit", "cursor"))
    f = queries.parse_rejection_filters(
        reason or (), agent or (), plugin or (), _one(request, "from"), _one(request, "to")
    )
    found = queries.rejections(
        context(request).store, f, queries.parse_limit(_one(request, "limit")),
        _one(request, "cursor"),
    )  # fmt: skip
    return JSONResponse(
        {"counts": found.counts, "rejections": found.page.items, "next": found.page.next}
    )


@api.delete("/agents/{agent_id}/data")
def delete_agent_data(
    agent_id: str, request: Request, caller: Annotated[Caller, Depends(require_admin)]
) -> dict[str, Any]:
    """Remove one agent's readings from every plugin table, those serve only knows from
    the processors' record included (admin); audited."""
    _only(request, ())
    ctx = context(request)
    try:
        tables = [t for ts in ctx.catalog.refresh().plugins.values() for t in ts]
        deleted = queries.delete_agent_data(ctx.store, agent_id, tables)
    except ReadError as exc:
        raise ApiError(400, str(exc), "agent_id") from None
    ctx.audit.write(caller, "delete_agent_data", agent=agent_id, counts=deleted)
    return {"deleted": deleted}


@api.get("/stream")
async def stream(
    request: Request,
    plugin: Many = None,
    agent: Many = None,
    kind: Many = None,
    last_event_id: Text = None,
) -> StreamingResponse:
    """Server-Sent Events of stored readings and rejections; resumes after Last-Event-ID."""
    from sparklem_core.http.stream import events
    from sparklem_core.reading.feed import KINDS, EventFilter, parse_event_id

    _only(request, ("plugin", "agent", "kind", "last_event_id"))
    for value in kind or ():
        if value not in KINDS:
            raise ApiError(400, f"kind must be one of {', '.join(KINDS)}", "kind")
    resume = request.headers.get("last-event-id") or _one(request, "last_event_id")
    if resume is not None:
        try:
            parse_event_id(resume)
        except ValueError as exc:
            raise ApiError(400, str(exc), "last_event_id") from None
    ctx = context(request)
    broadcaster = request.app.state.broadcaster()
    wanted = EventFilter(tuple(plugin or ()), tuple(agent or ()), tuple(kind or ()))
    body = events(
        broadcaster,
        await broadcaster.subscribe(wanted),  # before the headers: the client's "open" is safe
        resume,
        ctx.config.serve.stream_keepalive_s,
        request.is_disconnected,
    )
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
