"""The OpenAI-compatible chat-completions server (FastAPI): batching, guards, audit log, operator switch, streaming.

Endpoints:

* ``POST /v1/chat/completions``: OpenAI chat completions, non-streaming and ``stream: true`` (server-sent
  events in the ``chat.completion.chunk`` format, ending with ``data: [DONE]``). Honoured: ``max_tokens`` /
  ``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``n`` (up to 8; greedy choices are
  identical), ``stop`` (a string or a list: the answer is cut before it, ``finish_reason: "stop"``),
  ``presence_penalty`` / ``frequency_penalty`` (as OpenAI defines them, on the tokens generated so far),
  ``logprobs`` / ``top_logprobs`` (the model's log-probabilities before penalties and temperature),
  ``stream_options.include_usage``, ``response_format`` of type ``text``, and ``user`` (written to the audit
  log). Extensions: ``top_k``, and the assistant prefill: a trailing assistant message with
  ``continue_final_message: true`` is continued (the answer holds the continuation only), as in vLLM.
  Penalties and log-probs need a local model.
* ``GET /v1/models``, ``GET /v1/models/{name}``, ``GET /health`` (``{"status": "ok"}``; the models' state only
  with the API key or the admin token).
* ``POST /admin/models/{name}/disable`` and ``/enable`` (body optional: ``{"reason": "..."}``),
  ``GET /admin/models``: the operator switch, authorised by ``Authorization: Bearer <token>`` with the token
  from ``$ALIGNSCOPE_ADMIN_TOKEN`` (the admin endpoints answer 403 when no token is configured). A disabled
  model answers 503 (``code: "model_disabled"``) until enabled again, without a restart. Refused attempts are
  logged with the client's address and the path, never the credential.

Requests to one model that arrive together are generated as one batch (:mod:`alignscope.server.batching`);
``ServerSettings(max_batch_size=1)`` serves them one at a time.

Every answer carries an ``alignscope`` field (in the last chunk when streaming)::

    "alignscope": {
      "request_id": "chatcmpl-...",
      "guards": [{"guard": "probe(layer=5)", "stage": "input", "policy": "block", "decision": "blocked",
                  "score": 3.1, "threshold": 0.4, "detail": "", "ms": 41.2}],
      "blocked": true,        # a guard replaced the answer (finish_reason "content_filter")
      "flagged": false,       # a guard with policy "flag" fired
      "generated": false,     # false when an input guard refused before generating
      "decoding": "greedy, max_new_tokens=64", "seed": 0,
      "batch_rows": 0,        # sequences generated together with this request's (0: none generated)
      "timing_ms": {"guards": 41.2, "generate": 0.0}   # server-side time in guard checks and generation
    }

Each guard decision also carries ``ms``, the time its check took. The audit log gets every guard decision,
every operator action and refused admin attempt, and one ``request`` record per ``/v1`` request (status,
client, ``user``, request id, finish reasons), each flushed and fsynced as it is written.

Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``: 400 for bad JSON, wrong types,
unsupported fields or content (including ``input_audio`` for text models), too-long input; 401 for a wrong or
malformed API key; 404 for an unknown model; 413 for an oversized body; 429 when the model's queue is full; 503
while the model is disabled; 500 when generation itself fails. No request can stop the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignscope.models.base import ChatModel, Conversation, GenerationConfig
from alignscope.models.local import LocalModel
from alignscope.server.access import (
    ADMIN_TOKEN_ENV,
    RequestAuditMiddleware,
    check_admin,
    check_api_key,
    note,
    token_matches,
)
from alignscope.server.batching import QueueFull
from alignscope.server.decoding import Decoding
from alignscope.server.engine import LogprobEntry
from alignscope.server.guards import AudioGuard, Guard, GuardAuditLog, InputGuard, OutputGuard
from alignscope.server.pipeline import Job, Outcome, ServedModel, check_serving
from alignscope.server.responses import Piece, completion, generation_error, model_card, stream_events
from alignscope.server.schemas import APIError, ChatCompletionRequest, validation_error

log = logging.getLogger("alignscope.server")

__all__ = ["ADMIN_TOKEN_ENV", "ServerSettings", "create_app"]


@dataclass(frozen=True)
class ServerSettings:
    """Limits and defaults of the server.

    Attributes:
        max_input_chars: characters of message text a request may carry (400 beyond).
        max_body_bytes: size of a request body (413 beyond).
        max_tokens_limit: largest ``max_tokens`` accepted (400 beyond).
        default_max_tokens: ``max_tokens`` when the request gives none.
        default_temperature: temperature when the request gives none (1.0, as the OpenAI API; 0 is greedy).
        max_queue: requests waiting or running per model (429 beyond, which clients retry).
        max_batch_size: sequences generated together (a request with ``n`` sampled choices counts ``n``);
            1 serves one request at a time.
        batch_wait_ms: a batch is closed once no request has joined it for this long...
        max_batch_wait_ms: ...or this long after its first request.
        admin_token: the operator token; None reads ``$ALIGNSCOPE_ADMIN_TOKEN`` when the app is created.
        api_key: if set, ``/v1`` requests must send ``Authorization: Bearer <api_key>``.
    """

    max_input_chars: int = 32_000
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    default_temperature: float = 1.0
    max_queue: int = 256
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_batch_wait_ms: float = 100.0
    admin_token: str | None = None
    api_key: str | None = None


def create_app(
    model: ChatModel,
    guards: Sequence[Guard] = (),
    *,
    settings: ServerSettings | None = None,
    audit_log: GuardAuditLog | str | os.PathLike[str] | None = None,
    served_name: str | None = None,
    audio_guards: Sequence[AudioGuard] = (),
) -> FastAPI:
    """The server app for ``model``.

    Args:
        model: any :class:`ChatModel` (a local model is batched and streams token by token; others generate
            one request at a time through their own ``generate`` and stream the whole answer in one chunk).
        guards: :class:`InputGuard`s (run before generation, in order) and :class:`OutputGuard`s (run on the
            answer, in order); the first that blocks decides the answer.
        settings: limits and defaults (:class:`ServerSettings`).
        audit_log: a :class:`GuardAuditLog` or the path of its JSONL file; None logs to the logger only.
        served_name: the model name clients use (default ``model.name``).
        audio_guards: applied to ``input_audio`` parts once an audio model is served (none is yet).
    """
    settings = settings or ServerSettings()
    if settings.api_key is not None and not settings.api_key:
        raise ValueError("api_key is empty: give a key, or None for no key")
    admin_token = settings.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None
    audit = audit_log if isinstance(audit_log, GuardAuditLog) else GuardAuditLog(audit_log)
    name = served_name or model.name
    inputs = [g for g in guards if isinstance(g, InputGuard)]
    outputs = [g for g in guards if isinstance(g, OutputGuard)]
    unknown = [g for g in guards if not isinstance(g, InputGuard | OutputGuard)]
    if unknown:
        raise TypeError(f"not a guard (needs check_input or check_output): {unknown!r}")
    served = {
        name: ServedModel(
            name,
            model,
            inputs,
            outputs,
            list(audio_guards),
            audit,
            max_queue=settings.max_queue,
            max_batch_size=settings.max_batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            max_batch_wait_ms=settings.max_batch_wait_ms,
        )
    }

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for s in served.values():
            s.scheduler.shutdown()

    app = FastAPI(
        title="alignscope", summary="OpenAI-compatible chat completions with guards", lifespan=lifespan
    )
    app.add_middleware(RequestAuditMiddleware, audit=audit)
    app.state.served = served
    app.state.audit = audit
    app.state.settings = settings

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        note(request, error=e.message[:500])
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else "http_error"
        note(request, error=str(e.detail)[:500])
        return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), e.status_code)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        # without a credential: only that the server is up (no model names, no configuration)
        keys = [k for k in (settings.api_key, admin_token) if k]
        if not any(token_matches(request, k) for k in keys):
            return {"status": "ok"}
        return {"status": "ok", "models": {n: s.info() for n, s in served.items()}}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_api_key(request, settings.api_key)
        return {"object": "list", "data": [model_card(s) for s in served.values()]}

    @app.get("/v1/models/{model_name:path}")
    async def get_model(model_name: str, request: Request) -> dict[str, Any]:
        check_api_key(request, settings.api_key)
        return model_card(_lookup(served, model_name))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        check_api_key(request, settings.api_key)
        req = await _parse(request, settings)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        note(request, request_id=request_id, model=req.model, user=req.user, n=req.n, stream=req.stream)
        target = _lookup(served, req.model)
        check_serving(target)
        conversation, prefill, decoding = _prepare(req, target, settings)
        if req.stream:
            loop = asyncio.get_running_loop()
            feed: asyncio.Queue[Piece | None] = asyncio.Queue()

            def emit(choice: int, text: str, logprobs: list[LogprobEntry] | None) -> None:
                loop.call_soon_threadsafe(feed.put_nowait, (choice, text, logprobs))

            job = Job(request_id, conversation, prefill, decoding, emit=emit)
            task = _queue(target, job)  # before the response starts, so a full queue is a real 429
            task.add_done_callback(lambda _t: feed.put_nowait(None))
            return StreamingResponse(
                stream_events(request, target, req, decoding, job, task, feed),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        job = Job(request_id, conversation, prefill, decoding)
        outcome = await _submit(target, job)
        note(request, finish_reasons=[a.finish_reason for a in outcome.answers])
        return JSONResponse(completion(target, request_id, outcome, decoding))

    @app.get("/admin/models")
    async def admin_models(request: Request) -> dict[str, Any]:
        check_admin(request, admin_token, audit)
        return {"models": {n: s.info() for n, s in served.items()}}

    @app.post("/admin/models/{model_name:path}/disable")
    async def disable(model_name: str, request: Request) -> dict[str, Any]:
        return await _switch(request, model_name, False)

    @app.post("/admin/models/{model_name:path}/enable")
    async def enable(model_name: str, request: Request) -> dict[str, Any]:
        return await _switch(request, model_name, True)

    async def _switch(request: Request, model_name: str, on: bool) -> dict[str, Any]:
        check_admin(request, admin_token, audit)
        target = _lookup(served, model_name)
        reason = ""
        raw = await request.body()
        if raw.strip():
            try:
                body = json.loads(raw)
                reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
            except json.JSONDecodeError as e:
                raise APIError(400, f"invalid JSON body: {e.msg} at position {e.pos}") from None
        target.enabled = on
        target.disabled_reason = "" if on else (reason or "disabled by the operator")
        client = request.client.host if request.client else None
        audit.write(
            "admin", action="enable" if on else "disable", model=target.name, reason=reason, client=client
        )
        return {"model": target.name, **target.info()}

    return app


# -- request handling ----------------------------------------------------------------------------------------


async def _parse(request: Request, settings: ServerSettings) -> ChatCompletionRequest:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise APIError(413, f"request body over {settings.max_body_bytes} bytes", code="request_too_large")
    raw = bytearray()
    async for piece in request.stream():
        raw.extend(piece)
        if len(raw) > settings.max_body_bytes:
            raise APIError(
                413, f"request body over {settings.max_body_bytes} bytes", code="request_too_large"
            )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise APIError(400, f"invalid JSON{where}: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    # noted before validation, so a rejected request is attributed too
    note(request, **{k: data[k][:200] for k in ("model", "user") if isinstance(data.get(k), str)})
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


def _lookup(served: dict[str, ServedModel], name: str) -> ServedModel:
    if name not in served:
        raise APIError(
            404,
            f"model {name!r} is not served here (served: {', '.join(served)})",
            param="model",
            code="model_not_found",
        )
    return served[name]


def _prepare(
    req: ChatCompletionRequest, target: ServedModel, settings: ServerSettings
) -> tuple[Conversation, str | None, Decoding]:
    for i, m in enumerate(req.messages):
        if m.audio_parts():
            if not getattr(target.model, "accepts_audio", False):
                raise APIError(
                    400,
                    f"audio input not supported by this model ({target.name}): messages.{i} has input_audio",
                    param=f"messages.{i}.content",
                    code="unsupported_content",
                )
            raise APIError(501, "audio models are not served yet", code="not_implemented")
        others = m.other_parts()
        if others:
            raise APIError(
                400,
                f"content part type {others[0]!r} is not supported (use text)",
                param=f"messages.{i}.content",
                code="unsupported_content",
            )
    chars = req.input_chars()
    if chars > settings.max_input_chars:
        raise APIError(
            400,
            f"input is {chars} characters, over this server's limit of {settings.max_input_chars}",
            param="messages",
            code="input_too_long",
        )
    budget = req.token_budget or settings.default_max_tokens
    if budget > settings.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens={budget} is over this server's limit of {settings.max_tokens_limit}",
            "max_tokens",
        )
    conversation, prefill = req.conversation()
    if prefill is not None and not target.model.supports_prefill:
        raise APIError(
            400, f"{target.name} cannot continue an assistant message", param="continue_final_message"
        )
    if target.output_guards and req.n > 1:
        raise APIError(400, "n > 1 is not supported when output guards are on", param="n")
    if not isinstance(target.model, LocalModel):
        for name in ("presence_penalty", "frequency_penalty", "logprobs"):
            if getattr(req, name):
                raise APIError(400, f"{name!r} needs a local model; {target.name} is not one", param=name)
    temperature = settings.default_temperature if req.temperature is None else req.temperature
    sample = temperature > 0
    seed = req.seed if req.seed is not None else (secrets.randbelow(2**31) if sample else 0)
    config = GenerationConfig(
        max_new_tokens=budget,
        do_sample=sample,
        temperature=temperature if sample else 1.0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        top_k=req.top_k or 0,
        seed=seed,
        batch_size=req.n,
    )
    decoding = Decoding(
        config,
        n=req.n,
        stop=req.stop_strings,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
    )
    return conversation, prefill or None, decoding


def _queue(target: ServedModel, job: Job) -> asyncio.Future[Outcome]:
    try:
        return asyncio.wrap_future(target.scheduler.submit(job))
    except QueueFull as e:
        raise APIError(
            429, f"server busy: {e}; retry later", type="rate_limit_error", code="server_busy"
        ) from None


async def _submit(target: ServedModel, job: Job) -> Outcome:
    waiting = _queue(target, job)
    try:
        return await waiting
    except asyncio.CancelledError:
        job.cancelled.set()  # the client went away: stop generating its rows
        raise
    except Exception as e:  # a broken request must not take the server down
        raise generation_error(target, e) from None
