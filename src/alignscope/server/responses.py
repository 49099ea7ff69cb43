"""The server's answers in OpenAI's shapes: the chat completion, the streamed chunks (server-sent events) and
the model card, each with alignscope's own ``alignscope`` field, and errors as OpenAI-style bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from alignscope.models.base import ModelError
from alignscope.server.access import note
from alignscope.server.decoding import Decoding
from alignscope.server.engine import Generated, LogprobEntry
from alignscope.server.pipeline import Job, Outcome, ServedModel
from alignscope.server.schemas import APIError, ChatCompletionRequest

log = logging.getLogger("alignscope.server")

Piece = tuple[int, str, list[LogprobEntry] | None]
"""A streamed piece: choice index, text, log-prob entries."""


def generation_error(target: ServedModel, e: BaseException) -> APIError:
    """A failed request as the error its client gets: its own 4xx/503, or a 500 (logged) for a model error or
    a bug."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ModelError):
        log.warning("generation failed on %s: %s", target.name, e)
        return APIError(500, f"generation failed: {e}", type="server_error", code="model_error")
    log.error("unexpected error on %s", target.name, exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")


def model_card(s: ServedModel) -> dict[str, Any]:
    return {
        "id": s.name,
        "object": "model",
        "created": s.created,
        "owned_by": "alignscope",
        "alignscope": s.info(),
    }


def meta(request_id: str, outcome: Outcome | None, decoding: Decoding) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "guards": [d.to_dict() for d in outcome.decisions] if outcome else [],
        "blocked": outcome.blocked if outcome else False,
        "flagged": outcome.flagged if outcome else False,
        "generated": outcome.generated if outcome else False,
        "decoding": decoding.describe(),
        "seed": decoding.config.seed,
        "batch_rows": outcome.batch_rows if outcome else 0,
        "timing_ms": {
            "guards": round(sum(d.ms or 0.0 for d in outcome.decisions), 3) if outcome else 0.0,
            "generate": round(outcome.generate_ms, 3) if outcome else 0.0,
        },
    }


def usage(answers: list[Generated]) -> dict[str, int]:
    prompt = answers[0].prompt_tokens if answers else 0
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def logprobs_field(entries: list[LogprobEntry] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}


def completion(target: ServedModel, request_id: str, outcome: Outcome, decoding: Decoding) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": target.name,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": a.text},
                "finish_reason": a.finish_reason,
                "logprobs": logprobs_field(a.logprobs) if decoding.logprobs else None,
            }
            for i, a in enumerate(outcome.answers)
        ],
        "usage": usage(outcome.answers),
        "alignscope": meta(request_id, outcome, decoding),
    }


async def stream_events(
    request: Request,
    target: ServedModel,
    req: ChatCompletionRequest,
    decoding: Decoding,
    job: Job,
    task: asyncio.Future[Outcome],
    feed: asyncio.Queue[Piece | None],
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk per choice, content chunks as text is generated, a final chunk per
    choice with its ``finish_reason`` (the last one with the ``alignscope`` field), a usage chunk on request,
    then ``[DONE]``."""
    created = int(time.time())

    def chunk(
        choice: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        body = {
            "id": job.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": target.name,
            "choices": [{"index": choice, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        for choice in range(decoding.n):
            yield chunk(choice, {"role": "assistant", "content": ""})
        while (piece := await feed.get()) is not None:
            choice, text, logprobs = piece
            if text or logprobs:
                yield chunk(
                    choice,
                    {"content": text},
                    logprobs=logprobs_field(logprobs) if decoding.logprobs else None,
                )
        try:
            outcome = await task
        except Exception as e:
            err = generation_error(target, e)
            note(request, error=err.message[:500])
            yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        note(request, finish_reasons=[a.finish_reason for a in outcome.answers])
        last = len(outcome.answers) - 1
        for choice, answer in enumerate(outcome.answers):
            extra = {"alignscope": meta(job.request_id, outcome, decoding)} if choice == last else {}
            yield chunk(choice, {}, answer.finish_reason, **extra)
        if req.stream_options is not None and req.stream_options.include_usage:
            tail = {
                "id": job.request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": target.name,
                "choices": [],
                "usage": usage(outcome.answers),
            }
            yield f"data: {json.dumps(tail)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client went away (or we are done): stop generating
