"""Models and judges loaded once per experiment, shared by its stages (and by an audit's sub-experiments)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from alignscope.models.base import ChatModel


class ModelPool:
    """Loads each model spec once (the audited model is often also the prefill source or the judge model).

    Args:
        device / dtype: passed to :func:`alignscope.models.load_chat_model`.
        preloaded: specs mapped to already-loaded models (tests pass tiny models; an audit passes its pool on).
    """

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        preloaded: Mapping[str, ChatModel] | None = None,
    ) -> None:
        self.device, self.dtype = device, dtype
        self.cache: dict[str, ChatModel] = dict(preloaded or {})

    def get(self, spec: str) -> ChatModel:
        if spec not in self.cache:
            from alignscope.models.loading import load_chat_model

            self.cache[spec] = load_chat_model(spec, device=self.device, dtype=self.dtype)
        return self.cache[spec]

    def judge(self, spec: str) -> Any:
        """The judge for ``spec``; a judge model comes from this pool."""
        return load_judge_for(spec, loader=self.get)


def pool_of(
    models: ModelPool | Mapping[str, ChatModel] | None, device: str | None, dtype: str | None
) -> ModelPool:
    """``models`` as a pool: an existing pool is shared, a mapping preloads a new one."""
    if isinstance(models, ModelPool):
        return models
    return ModelPool(device, dtype, models)


def load_judge_for(
    spec: str, model: ChatModel | None = None, loader: Callable[[str], ChatModel] | None = None
) -> Any:
    """The judge for ``spec``. A model judge whose model spec names ``model`` (or names none while ``model`` is
    the judge's default) reuses that loaded model; other local judge models come from ``loader`` (default:
    :func:`alignscope.models.load_chat_model`); endpoints are reached by the judge itself."""
    from alignscope.judges.registry import DEFAULT_JUDGE_MODEL, JUDGES, get_judge, parse_judge_spec

    name, _, model_spec = parse_judge_spec(spec)
    entry = JUDGES.get(name)
    if entry is None or not entry.uses_model:
        return get_judge(spec)
    target = model_spec or entry.default_model or DEFAULT_JUDGE_MODEL
    if target.startswith("openai:"):
        return get_judge(spec)
    if model is not None and model.name == target:
        return get_judge(spec, model=model)
    if loader is None:
        from alignscope.models.loading import load_chat_model

        loader = load_chat_model
    return get_judge(spec, model=loader(target))
