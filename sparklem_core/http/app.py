"""The API's application: :func:`create_app` for uvicorn (``serve``) and the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from sparklem_core import __version__
from sparklem_core.db.store import Store, open_store
from sparklem_core.http import errors, routes
from sparklem_core.http.auth import Audit, Tokens
from sparklem_core.reading.catalog import LiveCatalog
from sparklem_core.settings.config import Config

STATIC = Path(__file__).parent / "static"  # the dashboard (index.html, app.js, vendor/)


def create_app(config: Config, store: Store | None = None) -> FastAPI:
    """The API under /api/v1 and the dashboard at /, reading through ``store``.

    Without ``store``, the plugins are loaded and a reader's Store declared from
    ``config`` (and disposed of at shutdown).
    """
    owned = store is None
    if store is None:
        _plugins, store = open_store(config, reader=True)
    broadcaster = None

    def get_broadcaster():  # noqa: ANN202  # one per process, started by the first client
        nonlocal broadcaster
        if broadcaster is None:
            from sparklem_core.http.stream import Broadcaster
            from sparklem_core.reading.feed import FeedReader

            settings = config.serve
            broadcaster = Broadcaster(
                FeedReader(store.engine), settings.stream_poll_s, settings.client_buffer
            )
        return broadcaster

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if broadcaster is not None:
            await broadcaster.close()
        if owned:
            store.dispose()

    app = FastAPI(
        title="Sparkle-M read API",
        version=__version__,
        description="Readings, aggregates, the fleet, rejections and a live stream. "
        "See docs/reading.md.",
        lifespan=lifespan,
    )
    app.state.tokens = Tokens(config.serve)
    app.state.context = routes.Context(
        config, store, LiveCatalog(store), Audit(config.serve.audit_log)
    )
    app.state.broadcaster = get_broadcaster
    errors.install(app)
    app.include_router(routes.public)
    app.include_router(routes.api)
    if config.serve.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.serve.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Last-Event-ID", "Content-Type"],
        )
    if STATIC.is_dir():  # h-dash11's files; StaticFiles fails on a missing directory
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="dashboard")
    return app
