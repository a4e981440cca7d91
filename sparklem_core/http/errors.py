"""Every error the API answers: ``{"error": "...", "param": "name"}``, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sparklem_core.db.errors import first_line
from sparklem_core.fleet.state import FleetError
from sparklem_core.reading.catalog import ReadError
from sparklem_core.settings.config import mask_secrets

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 200: status, one line, and the parameter at fault if any."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    body: dict[str, str] = {"error": message}
    if param is not None:
        body["param"] = param
    return JSONResponse(body, status_code=status)


def install(app: FastAPI) -> None:
    """Answer every failure as JSON with the right status."""

    @app.exception_handler(ApiError)
    async def _api(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.param)

    @app.exception_handler(ReadError)
    async def _read(_request: Request, exc: ReadError) -> JSONResponse:
        return error_response(404 if exc.not_found else 400, str(exc), exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ())]
        param = loc[-1] if loc else None
        return error_response(400, f"{param or 'request'}: {first.get('msg', 'invalid')}", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(FleetError)
    async def _fleet(_request: Request, exc: FleetError) -> JSONResponse:
        return error_response(503, str(exc))

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        # Unreachable or refusing: the server is fine, the database is not (yet).
        log.warning("database error: %s", mask_secrets(first_line(exc)))
        return error_response(
            503, "the database did not answer, or lacks its tables (python3 main.py init)"
        )
