"""A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI, llama.cpp, hosted APIs,
``alignscope serve``).

Spec: ``openai:<base_url>#<model>[?key=value&...]``, e.g. ``openai:http://127.0.0.1:8000/v1#smollm2`` or
``openai:https://api.example.com/v1#gpt-4o?key_env=EXAMPLE_KEY&max_concurrency=4``. Query options:

* ``key_env``: environment variable holding the API key (default ``OPENAI_API_KEY``; without it no key is sent,
  but a variable named explicitly in the spec must be set).
* ``prefill=continue``: the server continues a trailing assistant message (vLLM's and alignscope's
  ``continue_final_message``); without it the model does not support prefills and generating with one raises
  :class:`ModelError`, so the prefilling attack is reported as not applicable.
* ``max_concurrency`` (8), ``retries`` (4), ``timeout`` (seconds per request, 120), ``backoff`` (first retry
  delay in seconds, 0.5), ``max_tokens_field`` (``max_tokens``, or ``max_completion_tokens`` for APIs that want
  it).

Black-box: no weights, tokenizer or hidden states; white-box attributes raise :class:`ModelError` naming what
needs a local model. Closed questions are scored from the endpoint's top log-probs of the first generated token
(:meth:`RemoteModel.answer_logprobs`: ``/v1/completions`` with ``logprobs`` for raw-text classifier prompts, as
vLLM serves them, and ``/v1/chat/completions`` with ``logprobs``/``top_logprobs`` for conversations). Greedy decoding is sent as ``temperature: 0``; sampling sends ``temperature``,
``top_p``, ``top_k`` (a non-standard field that vLLM and alignscope accept; sent only when set) and ``seed``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx
from tqdm.auto import tqdm

from alignscope.models.base import (
    ChatModelBase,
    Conversation,
    GenerationConfig,
    GenerationRequest,
    ModelError,
    NoLogprobsError,
    Prefill,
    matched_prefills,
)

log = logging.getLogger("alignscope.models")

REMOTE_PREFIX = "openai:"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying: timeouts, rate limits and server-side failures."""

_WHITE_BOX = frozenset(
    {
        "tokenizer",
        "model",
        "device",
        "dtype",
        "num_layers",
        "format_chat",
        "encode_prompt",
        "response_ids",
        "response_logits",
        "response_logprobs",
        "last_token_hidden_states",
    }
)


T = TypeVar("T")

DEFAULT_TOP_LOGPROBS = 20
"""Top log-probs asked for per scored token (vLLM's default ceiling, and the OpenAI API's)."""


class RemoteHTTPError(ModelError):
    """The endpoint answered with an HTTP error status (after any retries)."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class BlackBoxError(ModelError, AttributeError):
    """White-box access (weights, tokenizer, hidden states) on a remote model. Also an ``AttributeError``, so
    ``hasattr(model, "tokenizer")`` stays False."""


@dataclass(frozen=True)
class RemoteConfig:
    """How to reach and drive one OpenAI-compatible model.

    Attributes:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the model name the server knows.
        key_env: environment variable holding the API key (read once, when the model is created).
        key_required: fail if ``key_env`` is unset (True when the spec names it explicitly).
        prefill: ``"none"`` or ``"continue"`` (trailing assistant message + ``continue_final_message``).
        max_concurrency: requests in flight at once.
        retries: further attempts after a 408/429/500/502/503/504 answer or a connection error (0 = no retry).
        backoff: delay before the first retry in seconds; doubled each time (with jitter), capped at
            ``backoff_max``; a ``Retry-After`` header wins when it asks for longer (capped too).
        backoff_max: longest single wait, in seconds.
        timeout: seconds allowed per request (read); connecting gets ``min(timeout, 10)``.
        max_tokens_field: the request field carrying the token budget.
    """

    base_url: str
    model: str
    key_env: str = DEFAULT_KEY_ENV
    key_required: bool = False
    prefill: str = "none"
    max_concurrency: int = 8
    retries: int = 4
    backoff: float = 0.5
    backoff_max: float = 8.0
    timeout: float = 120.0
    max_tokens_field: str = "max_tokens"
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scheme = urlsplit(self.base_url).scheme
        if scheme not in {"http", "https"} or not urlsplit(self.base_url).netloc:
            raise ModelError(f"remote model base URL {self.base_url!r} must start with http:// or https://")
        if not self.model:
            raise ModelError(f"remote model spec for {self.base_url} names no model (add #MODEL)")
        if self.prefill not in {"none", "continue"}:
            raise ModelError(f"prefill={self.prefill!r} for {self.base_url}: use 'none' or 'continue'")
        if self.max_concurrency < 1:
            raise ModelError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ModelError("retries and backoff must be >= 0 and timeout > 0")
        if self.max_tokens_field not in {"max_tokens", "max_completion_tokens"}:
            raise ModelError(
                f"max_tokens_field={self.max_tokens_field!r}: use max_tokens or max_completion_tokens"
            )

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def completions_url(self) -> str:
        """The (legacy) text-completions endpoint, for raw prompt strings."""
        return self.base_url.rstrip("/") + "/completions"


_SPEC_OPTIONS = {
    "key_env": str,
    "prefill": str,
    "max_concurrency": int,
    "retries": int,
    "timeout": float,
    "backoff": float,
    "max_tokens_field": str,
}


def is_remote_spec(spec: str) -> bool:
    """True for ``openai:...`` specs."""
    return spec.startswith(REMOTE_PREFIX)


def parse_remote_spec(spec: str) -> RemoteConfig:
    """``openai:<base_url>#<model>[?k=v&...]`` -> :class:`RemoteConfig` (see the module docstring).

    >>> parse_remote_spec("openai:http://127.0.0.1:8000/v1#smollm2?prefill=continue").prefill
    'continue'
    """
    if not is_remote_spec(spec):
        raise ModelError(f"{spec!r} is not a remote model spec (openai:<base_url>#<model>)")
    rest = spec[len(REMOTE_PREFIX) :]
    base_url, sep, model_part = rest.partition("#")
    if not sep:
        raise ModelError(f"remote model spec {spec!r} names no model: use openai:<base_url>#<model>")
    model, _, query = model_part.partition("?")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _SPEC_OPTIONS:
            raise ModelError(
                f"remote model spec {spec!r}: unknown option {key!r} (accepted: {', '.join(_SPEC_OPTIONS)})"
            )
        try:
            options[key] = _SPEC_OPTIONS[key](value)
        except ValueError:
            raise ModelError(f"remote model spec {spec!r}: option {key}={value!r} is not a number") from None
    if "key_env" in options:
        options["key_required"] = True
    return RemoteConfig(base_url=base_url.strip(), model=model.strip(), **options)


class RemoteModel(ChatModelBase):
    """A :class:`~alignscope.models.base.ChatModel` over an OpenAI-compatible chat-completions API.

    Each conversation is one request; up to ``config.max_concurrency`` run at once on a thread pool, and the
    results come back in input order. A request that still fails after its retries fails the whole call with a
    :class:`ModelError` naming the URL (callers such as :func:`alignscope.attacks.stage.generate_and_judge`
    have already saved earlier chunks, so a rerun with resume continues from there).

    Args:
        config: a :class:`RemoteConfig`, or a spec string for :func:`parse_remote_spec`.
        name: the name reports show (default: the spec, or ``openai:<base_url>#<model>``).
        transport: an ``httpx`` transport, for tests.
    """

    def __init__(
        self,
        config: RemoteConfig | str,
        name: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        if isinstance(config, str):
            name = name or config
            config = parse_remote_spec(config)
        self.config = config
        self.name = name or f"{REMOTE_PREFIX}{config.base_url}#{config.model}"
        key = os.environ.get(config.key_env)
        if config.key_required and not key:
            raise ModelError(
                f"remote model {self.name}: environment variable {config.key_env} (named in the spec) is not set"
            )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency
            ),
            transport=transport,
        )
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    @property
    def supports_prefill(self) -> bool:
        return self.config.prefill == "continue"

    # -- generation -------------------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest) -> list[str]:
        """One request per conversation, at most ``max_concurrency`` at once; texts in input order.

        Prefills must be text (a remote server tokenises them itself) and need ``prefill=continue``.
        """
        bodies = [self.request_body(c, request.config, prefill) for c, prefill in request.pairs()]
        return self._run(self._complete, bodies, f"generate ({self.name})", request.progress)

    def _run(
        self, fn: Callable[[dict[str, Any]], T], bodies: list[dict[str, Any]], desc: str, progress: bool
    ) -> list[T]:
        """``fn(body)`` for every body, at most ``max_concurrency`` at once; results in input order. The first
        failure cancels what has not started and is raised."""
        if not bodies:
            return []
        out: list[Any] = [None] * len(bodies)
        bar = tqdm(total=len(bodies), desc=desc, disable=not progress, leave=False)
        workers = min(self.config.max_concurrency, len(bodies))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alignscope-remote") as pool:
            futures: dict[Future[T], int] = {pool.submit(fn, b): i for i, b in enumerate(bodies)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    error = fut.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        bar.close()
                        raise error
                    out[futures[fut]] = fut.result()
                    bar.update(1)
        bar.close()
        return out

    def request_body(
        self, conversation: Conversation, config: GenerationConfig, prefill: Prefill = None
    ) -> dict[str, Any]:
        """The JSON body sent for one conversation (public so users can see exactly what is sent)."""
        messages: list[dict[str, Any]] = [dict(m) for m in conversation]
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            self.config.max_tokens_field: config.max_new_tokens,
            "seed": config.seed,
            **self.config.extra_body,
        }
        if config.do_sample:
            body["temperature"] = config.temperature
            body["top_p"] = config.top_p
            if config.top_k:
                body["top_k"] = config.top_k
        else:
            body["temperature"] = 0.0
        if prefill is not None and len(prefill) > 0:
            if not self.supports_prefill:
                raise ModelError(
                    f"remote model {self.name} does not support an assistant prefill "
                    "(add ?prefill=continue to the spec if the server continues a trailing assistant message)"
                )
            if not isinstance(prefill, str):
                raise ModelError(
                    f"remote model {self.name} takes text prefills only: the server tokenises them itself "
                    "(decode the token ids first)"
                )
            messages.append({"role": "assistant", "content": prefill})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    # -- closed questions -------------------------------------------------------------------------------------
    def answer_logprobs(
        self,
        prompts: Sequence[str | Conversation],
        answers: Sequence[str],
        prefills: Sequence[str] | None = None,
        *,
        ignore_case: bool = False,
        add_special_tokens: bool = True,
        batch_size: int = 8,
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
    ) -> list[list[float]]:
        """Log-probability that the answer to each prompt starts with each answer: ``(n_prompts, n_answers)``,
        read from the endpoint's top log-probs of the first generated token (one request per prompt, greedy,
        one token).

        Args:
            prompts: raw text (sent to ``/v1/completions`` with ``logprobs=top_logprobs``, the format vLLM
                serves) or conversations (``/v1/chat/completions`` with ``logprobs`` and ``top_logprobs``).
            answers: the allowed answers.
            prefills: appended to a raw prompt; for a conversation, a trailing assistant message the server
                continues (needs ``prefill=continue`` in the spec).
            ignore_case: match answers case-insensitively.
            add_special_tokens: False sends vLLM's ``add_special_tokens: false`` with raw prompts that carry
                their own BOS.
            batch_size: unused (requests run ``max_concurrency`` at a time); accepted for the local signature.
            top_logprobs: how many of the most probable first tokens the endpoint reports.

        An answer's value is the log of the summed probabilities of the reported tokens whose text, stripped of
        whitespace, equals it; ``-inf`` when none of them does (less probable than the ``top_logprobs``-th token,
        or not a single token). Raises :class:`NoLogprobsError` when the endpoint gives no log-probs.
        """
        del batch_size
        matched = matched_prefills(prefills, len(prompts), "prompts")
        one_token = GenerationConfig(max_new_tokens=1)
        bodies: list[dict[str, Any]] = []
        for prompt, prefill in zip(prompts, matched, strict=True):
            if isinstance(prompt, str):
                body: dict[str, Any] = {
                    "model": self.config.model,
                    "prompt": prompt + (prefill or ""),
                    self.config.max_tokens_field: 1,
                    "temperature": 0.0,
                    "logprobs": top_logprobs,
                    **self.config.extra_body,
                }
                if not add_special_tokens:
                    body["add_special_tokens"] = False
            else:
                body = self.request_body(prompt, one_token, prefill or None)
                body.update(logprobs=True, top_logprobs=top_logprobs)
            bodies.append(body)
        tops = self._run(self._top_logprobs, bodies, f"score ({self.name})", False)
        norm = (lambda t: t.strip().casefold()) if ignore_case else (lambda t: t.strip())
        out = []
        for top in tops:
            row = []
            for answer in answers:
                hits = [lp for token, lp in top.items() if norm(token) == norm(answer)]
                row.append(math.log(sum(math.exp(lp) for lp in hits)) if hits else -math.inf)
            out.append(row)
        return out

    def _top_logprobs(self, body: dict[str, Any]) -> dict[str, float]:
        """``{token text: log-prob}`` of the first generated token's top alternatives."""
        chat = "messages" in body
        url = self.config.url if chat else self.config.completions_url
        try:
            response = self._post(url, body)
        except RemoteHTTPError as e:
            if e.status in {400, 422} and "logprobs" in e.detail.lower():  # a server that rejects the field
                raise NoLogprobsError(str(e)) from e
            raise
        try:
            logprobs = response.json()["choices"][0].get("logprobs")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ModelError(
                f"remote model {self.name}: {url} returned no completion ({type(e).__name__}: {e}): "
                f"{response.text[:200]!r}"
            ) from e
        try:
            if chat:
                entries = logprobs["content"][0]["top_logprobs"]
                top = {str(e["token"]): float(e["logprob"]) for e in entries}
            else:
                top = {str(k): float(v) for k, v in logprobs["top_logprobs"][0].items()}
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            top = {}
        if not top:
            raise NoLogprobsError(
                f"remote model {self.name}: {url} returned no top log-probs "
                f"({'logprobs/top_logprobs' if chat else 'logprobs'} asked); scoring closed answers needs a "
                "server that reports them (vLLM does)"
            )
        return top

    def _complete(self, body: dict[str, Any]) -> str:
        return self._content(self._post(self.config.url, body))

    def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        """POST ``body`` to ``url`` with retries (see :class:`RemoteConfig`); the final 2xx response."""
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._client.post(url, json=body)
            except httpx.TransportError as e:
                if last:
                    raise ModelError(
                        f"remote model {self.name}: cannot reach {url} after {attempts} attempt(s): "
                        f"{type(e).__name__}: {e}"
                    ) from e
                self._sleep(attempt, None, f"{type(e).__name__}", url)
                continue
            if response.status_code in RETRY_STATUS and not last:
                self._sleep(attempt, response.headers.get("retry-after"), f"HTTP {response.status_code}", url)
                continue
            if response.status_code >= 400:
                raise RemoteHTTPError(
                    self._http_error(response, attempt + 1, url),
                    response.status_code,
                    _error_message(response),
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int, retry_after: str | None, why: str, url: str) -> None:
        with self._rng_lock:
            jitter = 0.5 + self._rng.random() / 2
        delay = min(self.config.backoff * 2**attempt * jitter, self.config.backoff_max)
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date: keep our own backoff
                delay = max(delay, min(float(retry_after), self.config.backoff_max))
        log.info("%s from %s; retry %d in %.2fs", why, url, attempt + 1, delay)
        time.sleep(delay)

    def _http_error(self, response: httpx.Response, attempts: int, url: str) -> str:
        detail = _error_message(response)
        hint = ""
        if response.status_code in {401, 403}:
            hint = f" (is the API key in ${self.config.key_env} right?)"
        elif response.status_code == 404:
            hint = f" (is {self.config.model!r} the model name the server knows, and the base URL right?)"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return f"remote model {self.name}: {url} answered HTTP {response.status_code}{tries}: {detail}{hint}"

    def _content(self, response: httpx.Response) -> str:
        try:
            data = response.json()
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(
                f"remote model {self.name}: {self.config.url} returned no chat completion "
                f"({type(e).__name__}: {e}): {response.text[:200]!r}"
            ) from e
        content = message.get("content")
        if content is None:  # e.g. a hosted model's own refusal field
            content = message.get("refusal") or ""
        return str(content)

    # -- lifecycle and misuse ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, attr: str) -> Any:
        # only called for missing attributes: white-box access gets a message saying why (still an AttributeError)
        if attr in _WHITE_BOX:
            raise BlackBoxError(
                f"remote model {self.name} is black-box: {attr!r} needs a local model (weights and tokenizer)"
            )
        raise AttributeError(attr)

    def __repr__(self) -> str:
        return f"RemoteModel({self.name!r})"


def _error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if "detail" in data:
            return str(data["detail"])[:300]
    return str(data)[:300]


def load_remote_model(spec: str) -> RemoteModel:
    """The remote model named by an ``openai:`` spec (used by :func:`alignscope.models.load_chat_model`)."""
    return RemoteModel(spec)
