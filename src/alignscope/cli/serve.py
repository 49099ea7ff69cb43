"""``alignscope serve``: the OpenAI-compatible server with guards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from alignscope.cli.apps import app
from alignscope.cli.common import DeviceOpt, DtypeOpt, ModelOpt, handle_errors


@app.command()
@handle_errors
def serve(
    model: ModelOpt = "smollm2",
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    guard: Annotated[
        list[str] | None,
        typer.Option(
            help="Guard spec KIND[:block|flag|allow][=ARG], repeatable: probe=guard.json, "
            "judge:block=HARM_JUDGE (wildguard:MODEL, llama-guard:MODEL, llm-rubric:MODEL), "
            "request-complied=guard.json, keyword=bomb|sarin."
        ),
    ] = None,
    audit_log: Annotated[Path | None, typer.Option(help="Append-only JSONL log of guard decisions.")] = None,
    served_name: Annotated[
        str | None, typer.Option(help="Model name clients use (default: the spec).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads.")] = None,
    max_input_chars: Annotated[int | None, typer.Option(help="Reject longer inputs (400).")] = None,
    max_tokens_limit: Annotated[
        int | None, typer.Option(help="Largest max_tokens a request may ask.")
    ] = None,
    max_queue: Annotated[int | None, typer.Option(help="Requests waiting before 429.")] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Sequences generated together (default 32; 1: one request at a time)."),
    ] = None,
    batch_wait_ms: Annotated[
        float | None,
        typer.Option(min=0, help="A batch closes once no request has joined it for this long (default 5)."),
    ] = None,
    max_batch_wait_ms: Annotated[
        float | None,
        typer.Option(min=0, help="...or this long after its first request (default 100)."),
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Env var holding the API key clients must send.")
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Serve a model over the OpenAI-compatible chat API, with optional guards and an audit log.

    The operator switch (POST /admin/models/NAME/disable|enable) needs $ALIGNSCOPE_ADMIN_TOKEN."""
    import os

    from alignscope.server import serve as run_server

    settings: dict[str, Any] = {
        k: v
        for k, v in {
            "max_input_chars": max_input_chars,
            "max_tokens_limit": max_tokens_limit,
            "max_queue": max_queue,
            "max_batch_size": max_batch_size,
            "batch_wait_ms": batch_wait_ms,
            "max_batch_wait_ms": max_batch_wait_ms,
        }.items()
        if v is not None
    }
    if api_key_env:
        if api_key_env not in os.environ:
            raise ValueError(f"--api-key-env names {api_key_env}, which is not set")
        settings["api_key"] = os.environ[api_key_env]
    run_server(
        model,
        host,
        port,
        guard or (),
        audit_log=audit_log,
        served_name=served_name,
        device=device,
        dtype=dtype,
        threads=threads,
        **settings,
    )
