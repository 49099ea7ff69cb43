"""The defence-in-depth scorecard (``alignscope scorecard``): every attack family against each model, at what
cost in over-refusal, in one run and one report.

    from alignscope.scorecard import ScorecardConfig, run_scorecard
    from alignscope.runs import RunDir

    config = ScorecardConfig(models=("smollm2-aligned", "smollm2-deep"), profile="quick")
    result = run_scorecard(config, RunDir.create("scorecard", config.to_dict()))
    print(result.summary())
    result.leaderboard()      # safest first: worst-family success, then over-refusal

Families (:data:`FAMILIES`): ``direct`` harmful requests, ``prefill`` (k tokens of a harmful answer forced),
``decoding`` (worst case of a decoding-parameter sweep), ``gcg`` (fresh optimisations on held-out
behaviours), ``finetune`` (the harmful fine-tuning attack, optionally under the provider's defence),
``audio`` (spoken PGD, and the adaptive attacker through TDNF) and ``over_refusal`` (benign and
alarming-but-safe prompts refused, and helpfulness). Rates are named by what the judge can tell: non-refusal
for the keyword judge, harmful rate for a harm judge; each with its Wilson 95 % interval.
"""

from alignscope.scorecard.config import ATTACK_FAMILIES, FAMILIES, PROFILES, ScorecardConfig
from alignscope.scorecard.guard import ModelGuards
from alignscope.scorecard.result import FamilyScore, ScorecardResult
from alignscope.scorecard.run import model_run, model_slug, run_scorecard

__all__ = [
    "ATTACK_FAMILIES",
    "FAMILIES",
    "PROFILES",
    "FamilyScore",
    "ModelGuards",
    "ScorecardConfig",
    "ScorecardResult",
    "model_run",
    "model_slug",
    "run_scorecard",
]
