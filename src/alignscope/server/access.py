"""Who may call the server, and the audit log's record of every API request.

Credentials are compared as bytes in constant time, so a malformed ``Authorization`` header (non-ASCII, no
``Bearer``, empty) is a 401 like any wrong key. Failed admin attempts are logged (client address and path,
never the credential), and every ``/v1`` request leaves a ``request`` record in the audit log with its HTTP
status, so a client's session can be checked afterwards.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignscope.server.guards import GuardAuditLog
from alignscope.server.schemas import APIError

log = logging.getLogger("alignscope.server")

ADMIN_TOKEN_ENV = "ALIGNSCOPE_ADMIN_TOKEN"
_AUDIT_KEY = "alignscope_audit"


def presented_token(request: Request) -> bytes | None:
    """The bearer token's raw bytes, or None when the header is missing or not ``Bearer <token>``.

    Header values reach us decoded as latin-1; encoding back gives the bytes the client sent."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("latin-1")


def token_matches(request: Request, secret: str) -> bool:
    """Whether the request carries ``secret`` as its bearer token (constant-time, on bytes)."""
    given = presented_token(request)
    return given is not None and hmac.compare_digest(given, secret.encode("utf-8"))


def check_api_key(request: Request, api_key: str | None) -> None:
    """401 unless ``api_key`` is unset or presented."""
    if api_key is not None and not token_matches(request, api_key):
        raise APIError(401, "invalid or missing API key", type="authentication_error", code="invalid_api_key")


def check_admin(request: Request, token: str | None, audit: GuardAuditLog) -> None:
    """403 when the admin endpoints are off, 401 (logged, without the credential) for a wrong or malformed
    token."""
    if not token:
        raise APIError(
            403,
            f"admin endpoints are off: start the server with ${ADMIN_TOKEN_ENV} set",
            type="permission_error",
            code="admin_disabled",
        )
    if token_matches(request, token):
        return
    reason = "no bearer token" if presented_token(request) is None else "wrong token"
    client = request.client.host if request.client else None
    log.warning("refused admin request %s %s from %s: %s", request.method, request.url.path, client, reason)
    audit.write("admin_denied", method=request.method, path=request.url.path, client=client, reason=reason)
    raise APIError(401, "invalid or missing admin token", type="authentication_error", code="invalid_token")


def note(request: Request, **fields: Any) -> None:
    """Add ``fields`` to the request's audit record (written when the response is done)."""
    record = request.scope.get("state", {}).get(_AUDIT_KEY)
    if isinstance(record, dict):
        record.update(fields)


class RequestAuditMiddleware:
    """Writes one ``request`` record per ``/v1`` request once its response is complete (streams included):
    method, path, HTTP status, client address, milliseconds, and what the handler noted (request id, model,
    ``user``, ``n``, ``stream``, finish reasons, error message). Never the body or credentials."""

    def __init__(self, app: ASGIApp, audit: GuardAuditLog):
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1"):
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {}
        scope.setdefault("state", {})[_AUDIT_KEY] = record
        status: dict[str, int] = {}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        except BaseException as e:  # an unhandled error (500) or a client that went away
            record.setdefault("error", type(e).__name__)
            raise
        finally:
            client = scope.get("client")
            fields = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status.get("code"),  # None: no response was sent
                "client": client[0] if client else None,
                "ms": round((time.perf_counter() - t0) * 1000, 1),
                **record,
            }
            # the file is fsynced per record: off the event loop
            await asyncio.to_thread(self.audit.write, "request", **fields)
