"""An OpenAI-compatible chat-completions server for any alignscope model, with batched generation, guards, an
audit log of every guard decision and request, and an operator switch (see :mod:`alignscope.server.app` for the
endpoints, parameters and the response's ``alignscope`` field, :mod:`alignscope.server.batching` for batching,
:mod:`alignscope.server.guards` for guards and policies).

    from alignscope.server import BackgroundServer, ProbeInputGuard, create_app
    app = create_app(model, [ProbeInputGuard(probe, "block")], audit_log="guard_log.jsonl")
    with BackgroundServer(app) as server:
        ...  # openai.OpenAI(base_url=server.base_url, api_key="none")
"""

from alignscope.server.app import ADMIN_TOKEN_ENV, ServerSettings, create_app
from alignscope.server.guards import (
    DEFAULT_REFUSAL,
    POLICIES,
    AudioGuard,
    GuardAuditLog,
    GuardCheck,
    GuardDecision,
    InputGuard,
    JudgeOutputGuard,
    KeywordOutputGuard,
    OutputGuard,
    Policy,
    ProbeInputGuard,
    RequestCompliedGuard,
    build_guard,
    parse_guard_spec,
)
from alignscope.server.pipeline import ServedModel
from alignscope.server.runner import BackgroundServer, build_app, serve

__all__ = [
    "ADMIN_TOKEN_ENV",
    "DEFAULT_REFUSAL",
    "POLICIES",
    "AudioGuard",
    "BackgroundServer",
    "GuardAuditLog",
    "GuardCheck",
    "GuardDecision",
    "InputGuard",
    "JudgeOutputGuard",
    "KeywordOutputGuard",
    "OutputGuard",
    "Policy",
    "ProbeInputGuard",
    "RequestCompliedGuard",
    "ServedModel",
    "ServerSettings",
    "build_app",
    "build_guard",
    "create_app",
    "parse_guard_spec",
    "serve",
]
