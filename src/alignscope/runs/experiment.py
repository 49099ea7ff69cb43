"""The scaffolding every model-pool experiment shares, written once.

An experiment of the registry (:mod:`alignscope.experiments`) is called as
``run_x(config=None, run=None, *, models=None, progress=True) -> XResult``: a missing config means the
defaults, ``models`` shares already-loaded models (a pool, or specs mapped to models), and with ``run`` the
records are stored and the report is rebuilt from them last. :func:`experiment` turns the part that differs,
``body(config, run, pool, progress) -> XResult``, into that function::

    @experiment(PrefillConfig)
    def run_prefill(config: PrefillConfig, run: RunDir | None, pool: ModelPool, progress: bool) -> PrefillResult:
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from alignscope.config_io import DeviceSettings
from alignscope.models.base import ChatModel
from alignscope.models.pool import ModelPool, pool_of
from alignscope.runs.finish import rebuild_report
from alignscope.runs.store import RunDir

SharedModels = ModelPool | Mapping[str, ChatModel] | None
"""What an experiment's ``models`` argument takes: a pool to share, specs mapped to loaded models, or None."""

C = TypeVar("C", bound=DeviceSettings)
C_contra = TypeVar("C_contra", bound=DeviceSettings, contravariant=True)
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

Body = Callable[[C, RunDir | None, ModelPool, bool], R]
"""What an experiment does with its config, its run (or None), its pool of models and the progress flag."""


class ExperimentRunner(Protocol[C_contra, R_co]):
    """The call every registered experiment answers (see :mod:`alignscope.experiments`)."""

    def __call__(
        self,
        config: C_contra | None = None,
        run: RunDir | None = None,
        *,
        models: SharedModels = None,
        progress: bool = True,
    ) -> R_co: ...


def experiment(
    default: Callable[[], C], *, report: bool = True
) -> Callable[[Body[C, R]], ExperimentRunner[C, R]]:
    """Decorate ``body(config, run, pool, progress)`` into ``run_x(config=None, run=None, *, models=None,
    progress=True)``.

    Args:
        default: makes the config used when none is given (the config class).
        report: rebuild ``run``'s metrics and report after the body; False for a body that rebuilds them
            itself because it reads the rebuilt metrics back (the audit).

    The returned function keeps the body's name, module and docstring, so the registry, the package root and
    ``help()`` show it as the experiment; its signature is the experiment's, not the body's.
    """

    def wrap(body: Body[C, R]) -> ExperimentRunner[C, R]:
        def runner(
            config: C | None = None,
            run: RunDir | None = None,
            *,
            models: SharedModels = None,
            progress: bool = True,
        ) -> R:
            config = config or default()
            result = body(config, run, pool_of(models, config.device, config.dtype), progress)
            if report:
                rebuild_report(run)
            return result

        # not functools.wraps: its __wrapped__ would make inspect.signature show the body's parameters
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(runner, attr, getattr(body, attr))
        return runner

    return wrap
