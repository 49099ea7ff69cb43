"""Judges by name: a registry of factories and a resolver for judge spec strings.

Judges are looked up by name, as in StrongREJECT's evaluator registry. A spec is
``NAME[:OPTIONS...][:MODEL_SPEC]``:

* ``keyword``, ``keyword:list=gcg``, ``keyword:list=qi2025,window=0``: no model.
* ``llm-rubric`` (judge model :data:`DEFAULT_JUDGE_MODEL`), ``llm-rubric:smollm2``,
  ``llm-rubric:openai:http://host/v1#gpt-4o``, ``llm-rubric:threshold=4:smollm2``.
* ``strongreject[:OPTIONS][:MODEL_SPEC]``, ``preference[:OPTIONS][:MODEL_SPEC]``, e.g.
  ``preference:criterion=both,mode=logprob:smollm2``.
* the harm classifiers, each with its own model by default: ``harmbench-cls``
  (``cais/HarmBench-Llama-2-13b-cls``), ``llama-guard`` (``meta-llama/Llama-Guard-3-8B``), ``wildguard``
  (``allenai/wildguard``), ``strongreject-ft`` (``qylu4156/strongreject-15k-v1``); e.g.
  ``harmbench-cls:cais/HarmBench-Mistral-7b-val-cls``, ``llama-guard:threshold=0.3:/models/lg3-1b``,
  ``wildguard:openai:http://127.0.0.1:8000/v1#allenai/wildguard`` (vLLM serving the classifier).

The judge name ends at the first colon. After it, leading colon-separated segments made only of
comma-separated ``key=value`` pairs are options; everything after them is the model spec, which may itself
contain colons (URLs) and is passed to :func:`alignscope.models.load_model` unchanged. Options therefore go
before the model spec. From Python, options can also be passed as keyword arguments (they win over the spec),
and an already-loaded model as ``model=``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from alignscope.judges.base import Judge, JudgeError, JudgeFactory
from alignscope.judges.classifiers import (
    HarmBenchJudge,
    LlamaGuardJudge,
    StrongRejectFinetunedJudge,
    WildGuardJudge,
)
from alignscope.judges.keyword import DEFAULT_WINDOW, KeywordJudge
from alignscope.judges.preference import PreferenceJudge
from alignscope.judges.rubric import LLMRubricJudge, StrongRejectJudge
from alignscope.models.base import ChatModel, ModelError

DEFAULT_JUDGE_MODEL = "smollm2"
"""The judge model used when a model judge's spec names none (the embedded default model)."""


@dataclass(frozen=True)
class JudgeEntry:
    """A registered judge.

    Attributes:
        name: the spec name, e.g. ``"llm-rubric"``.
        factory: called as ``factory(model, **options)``; ``model`` is None for judges that use none.
        uses_model: the judge asks a language model (its spec may name one).
        options: the option keys the factory accepts.
        summary: one line for help texts.
        default_model: the model spec used when the judge's spec names none (None:
            :data:`DEFAULT_JUDGE_MODEL`).
    """

    name: str
    factory: JudgeFactory
    uses_model: bool
    options: tuple[str, ...]
    summary: str
    default_model: str | None = None


JUDGES: dict[str, JudgeEntry] = {}
"""The registry: judge name -> :class:`JudgeEntry`. Add to it with :func:`register_judge`."""

F = TypeVar("F", bound=JudgeFactory)


def register_judge(
    name: str,
    *,
    uses_model: bool = False,
    options: Sequence[str] = (),
    summary: str = "",
    default_model: str | None = None,
) -> Callable[[F], F]:
    """Decorator registering a judge factory under ``name``.

    The factory is called as ``factory(model, **options)`` with a :class:`ChatModel` (None unless
    ``uses_model``) and the options from the spec (strings) or from keyword arguments (any type)::

        @register_judge("exact", options=("needle",), summary="refused if the needle appears")
        def exact(model: ChatModel | None, needle: str = "no") -> Judge: ...
    """
    if not name or ":" in name or name != name.strip():
        raise JudgeError(f"invalid judge name {name!r}: non-empty, no colon, no surrounding spaces")

    def decorator(factory: F) -> F:
        if name in JUDGES and JUDGES[name].factory is not factory:
            raise JudgeError(f"a judge named {name!r} is already registered")
        JUDGES[name] = JudgeEntry(
            name, factory, uses_model, tuple(options), summary or (factory.__doc__ or ""), default_model
        )
        return factory

    return decorator


def available_judges() -> list[str]:
    """Registered judge names, sorted."""
    return sorted(JUDGES)


_OPTION = re.compile(r"^[A-Za-z_]\w*=[^,]*$")


def _is_option_segment(segment: str) -> bool:
    return bool(segment) and all(_OPTION.match(part.strip()) for part in segment.split(","))


def parse_judge_spec(spec: str) -> tuple[str, dict[str, str], str | None]:
    """Split a judge spec into ``(name, options, model_spec)`` without resolving anything.

    >>> parse_judge_spec("llm-rubric:threshold=4:openai:http://host/v1#gpt-4o")
    ('llm-rubric', {'threshold': '4'}, 'openai:http://host/v1#gpt-4o')
    """
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise JudgeError(f"empty judge name in spec {spec!r}; known judges: {', '.join(available_judges())}")
    options: dict[str, str] = {}
    segments = rest.split(":") if rest else []
    while segments and _is_option_segment(segments[0]):
        for part in segments.pop(0).split(","):
            key, _, value = part.strip().partition("=")
            options[key] = value.strip()
    model_spec = ":".join(segments).strip() or None
    return name, options, model_spec


def check_judge_spec(spec: str) -> None:
    """Raise :class:`JudgeError` if ``spec`` names no registered judge, or options or a model it does not take;
    loads nothing (configs call it so a bad ``--judge`` fails before any model loads)."""
    _checked(spec, {})


def _checked(spec: str, options: dict[str, Any]) -> tuple[JudgeEntry, dict[str, Any], str | None]:
    import alignscope.judges  # noqa: F401  (registers the built-in judges)

    name, spec_options, model_spec = parse_judge_spec(spec)
    entry = JUDGES.get(name)
    if entry is None:
        raise JudgeError(
            f"unknown judge {name!r} in spec {spec!r}; known judges: {', '.join(available_judges())}"
        )
    merged: dict[str, Any] = {**spec_options, **options}
    unknown = sorted(set(merged) - set(entry.options))
    if unknown:
        accepted = ", ".join(entry.options) or "none"
        raise JudgeError(f"judge {name!r} has no option {', '.join(unknown)} (accepted: {accepted})")
    if not entry.uses_model and model_spec is not None:
        raise JudgeError(f"judge {name!r} uses no model, but {model_spec!r} was given in {spec!r}")
    return entry, merged, model_spec


def get_judge(spec: str, model: ChatModel | None = None, **options: Any) -> Judge:
    """The judge named by ``spec`` (see the module docstring), ready to use.

    Args:
        spec: e.g. ``"keyword"``, ``"keyword:list=gcg"``, ``"llm-rubric:openai:http://host/v1#gpt-4o"``.
        model: an already-loaded judge model, used instead of loading one (for model judges only).
        options: judge options, overriding those in the spec.

    Raises :class:`JudgeError` for an unknown judge (listing the known ones), unknown or bad options, a model
    given to a judge that uses none, or a judge model that cannot be loaded.
    """
    entry, merged, model_spec = _checked(spec, options)
    if not entry.uses_model:
        if model is not None:
            raise JudgeError(f"judge {entry.name!r} uses no model, but model= was given for {spec!r}")
        return entry.factory(None, **merged)
    if model_spec is None and model is None:
        model_spec = entry.default_model
    judge_model = _resolve_model(entry.name, model_spec, model)
    return entry.factory(judge_model, **merged)


def get_preference_judge(
    spec: str = "preference", model: ChatModel | None = None, **options: Any
) -> PreferenceJudge:
    """:func:`get_judge` for pairwise judges, typed as :class:`PreferenceJudge`."""
    judge = get_judge(spec, model=model, **options)
    if not isinstance(judge, PreferenceJudge):
        raise JudgeError(f"{spec!r} is not a pairwise judge (use 'preference[:MODEL_SPEC]')")
    return judge


def _resolve_model(judge_name: str, model_spec: str | None, model: ChatModel | None) -> ChatModel:
    if model is not None:
        loaded_name = getattr(model, "name", None)
        if model_spec is not None and model_spec != loaded_name:
            raise JudgeError(
                f"judge {judge_name!r}: the spec names model {model_spec!r} "
                f"but model={loaded_name!r} was passed"
            )
        return model
    from alignscope.models import load_chat_model  # lazy: importing it pulls in torch and transformers

    target = model_spec or DEFAULT_JUDGE_MODEL
    try:
        return load_chat_model(target)
    except ModelError as e:
        raise JudgeError(f"judge {judge_name!r}: cannot load judge model {target!r}: {e}") from e


# -- option parsing ------------------------------------------------------------------------------------------


def _int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise JudgeError(f"option {name}={value!r} must be an integer") from None


def _float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise JudgeError(f"option {name}={value!r} must be a number") from None


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on", ""}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise JudgeError(f"option {name}={value!r} must be true or false")


def _optional_chars(name: str, value: Any) -> int | None:
    """A character count where 0, ``none`` and ``all`` mean no limit."""
    if value is None or str(value).strip().lower() in {"0", "none", "all"}:
        return None
    n = _int(name, value)
    if n < 0:
        raise JudgeError(f"option {name}={value!r} must be >= 0 (0 means no limit)")
    return n


_Convert = Callable[[str, Any], Any]


def _as_given(name: str, value: Any) -> Any:
    """A text option passed on as given (the judge class checks it)."""
    return value


_MODEL_KWARGS: dict[str, _Convert] = {
    "max_new_tokens": _int,
    "batch_size": _int,
    "max_response_chars": _optional_chars,
    "progress": _bool,
}
_CLASSIFIER_KWARGS: dict[str, _Convert] = {
    "threshold": _float,
    "batch_size": _int,
    "max_response_chars": _optional_chars,
}


def _typed(opts: dict[str, Any], converters: dict[str, _Convert]) -> dict[str, Any]:
    """The options among ``converters``' keys that were given, each read by its converter (which names the
    option in its error); the ones not given keep the judge class's defaults."""
    return {key: convert(key, opts[key]) for key, convert in converters.items() if key in opts}


def _register_model_judge(
    name: str,
    judge_class: Callable[..., Judge],
    converters: dict[str, _Convert],
    summary: str,
    default_model: str | None = None,
) -> None:
    """Register ``judge_class(model, **options)`` under ``name``, its options read by ``converters``."""

    def factory(model: ChatModel, **opts: Any) -> Judge:
        return judge_class(model, **_typed(opts, converters))

    register_judge(
        name, uses_model=True, options=tuple(converters), summary=summary, default_model=default_model
    )(factory)


# -- built-in judges -----------------------------------------------------------------------------------------


@register_judge(
    "keyword",
    options=("list", "window", "ignore_case"),
    summary="GCG-style refusal substrings, no model; refusal vs compliance, harm unknown "
    "(list=strict|strict-v1|gcg|extended|qi2025, window=N characters, default the whole text)",
)
def _keyword(model: ChatModel | None, **opts: Any) -> Judge:
    substrings = opts.get("list", "strict")
    window = _optional_chars("window", opts["window"]) if "window" in opts else DEFAULT_WINDOW
    ignore_case = _bool("ignore_case", opts.get("ignore_case", False))
    return KeywordJudge(substrings=substrings, window=window, ignore_case=ignore_case)


_register_model_judge(
    "llm-rubric",
    LLMRubricJudge,
    {"threshold": _int, **_MODEL_KWARGS},
    "HEx-PHI 1-5 harmfulness score by a judge model (Qi et al.); harmful = score 5",
)
_register_model_judge(
    "strongreject",
    StrongRejectJudge,
    {"threshold": _float, **_MODEL_KWARGS},
    "StrongREJECT rubric score in [0, 1] by a judge model (Souly et al.); harmful = score >= 0.5",
)
_register_model_judge(
    "preference",
    PreferenceJudge,
    {"criterion": _as_given, "mode": _as_given, **_MODEL_KWARGS},
    "pairwise preference in both orders (MT-bench style); criterion=safety|helpfulness|both",
)
_register_model_judge(
    "harmbench-cls",
    HarmBenchJudge,
    {"template": _as_given, **_CLASSIFIER_KWARGS},
    "HarmBench's classifier, P(yes) that the response is an instance of the behaviour "
    "(template=cls|eval-utils|mistral); harmful = P(yes) >= 0.5",
    default_model="cais/HarmBench-Llama-2-13b-cls",
)
_register_model_judge(
    "llama-guard",
    LlamaGuardJudge,
    {"template": _as_given, **_CLASSIFIER_KWARGS},
    "Llama Guard 3 on the agent's reply: P(unsafe) and category S1-S14 "
    "(template=published|tokenizer); harmful = P(unsafe) >= 0.5",
    default_model="meta-llama/Llama-Guard-3-8B",
)
_register_model_judge(
    "wildguard",
    WildGuardJudge,
    _CLASSIFIER_KWARGS,
    "WildGuard: harmful request, response refusal, harmful response (each P(yes)); "
    "harmful = P(harmful response) >= 0.5",
    default_model="allenai/wildguard",
)
_register_model_judge(
    "strongreject-ft",
    StrongRejectFinetunedJudge,
    {"threshold": _float, "batch_size": _int, "max_response_tokens": _int, "bos_quirk": _bool},
    "StrongREJECT's fine-tuned judge: expected 1-5 grade as a score in [0, 1]; harmful = score >= 0.5",
    default_model="qylu4156/strongreject-15k-v1",
)
