"""Judges: decide whether a response refuses, complies, and (for judges that can tell) helps a harmful request.

* ``keyword``: GCG-style refusal substrings (Zou et al. 2023), no model.
* ``llm-rubric``: HEx-PHI 1-5 harmfulness score by a judge model (Qi et al. 2024, 2025).
* ``strongreject``: StrongREJECT rubric score (Souly et al. 2024).
* ``preference``: pairwise comparison in both orders (Zheng et al. 2023), for safety and helpfulness.
* ``harmbench-cls``, ``llama-guard``, ``wildguard``, ``strongreject-ft``: the published harm classifiers with
  their own prompts, answers scored by log-probability (:mod:`alignscope.judges.classifiers`).

Get one by spec with :func:`get_judge` (``"keyword:list=gcg"``, ``"llm-rubric:smollm2"``), or build the class
directly. Every verdict keeps the judge's raw output, so results can be re-judged without regenerating.
"""

from alignscope.judges.base import Judge, JudgeError, Verdict, full_texts, judge_one
from alignscope.judges.classifiers import (
    HarmBenchJudge,
    LlamaGuardJudge,
    StrongRejectFinetunedJudge,
    WildGuardJudge,
)
from alignscope.judges.keyword import (
    REFUSAL_LISTS,
    REFUSAL_SUBSTRINGS,
    KeywordJudge,
    find_refusal,
    refusal_match,
)
from alignscope.judges.outcomes import (
    AttackSuccess,
    attack_success,
    harmful_rate,
    non_refusal_rate,
    outcome_rates,
    refusal_rate,
    verdict_of,
)
from alignscope.judges.preference import PreferenceJudge, PreferenceVerdict, parse_preference
from alignscope.judges.records import JudgedRecord
from alignscope.judges.registry import (
    DEFAULT_JUDGE_MODEL,
    JUDGES,
    available_judges,
    get_judge,
    get_preference_judge,
    parse_judge_spec,
    register_judge,
)
from alignscope.judges.rubric import (
    LLMRubricJudge,
    StrongRejectJudge,
    parse_rubric_output,
    parse_strongreject_output,
    strongreject_score,
)

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "JUDGES",
    "REFUSAL_LISTS",
    "REFUSAL_SUBSTRINGS",
    "AttackSuccess",
    "HarmBenchJudge",
    "Judge",
    "JudgeError",
    "JudgedRecord",
    "KeywordJudge",
    "LLMRubricJudge",
    "LlamaGuardJudge",
    "PreferenceJudge",
    "PreferenceVerdict",
    "StrongRejectFinetunedJudge",
    "StrongRejectJudge",
    "Verdict",
    "WildGuardJudge",
    "attack_success",
    "available_judges",
    "find_refusal",
    "full_texts",
    "get_judge",
    "get_preference_judge",
    "harmful_rate",
    "judge_one",
    "non_refusal_rate",
    "outcome_rates",
    "parse_judge_spec",
    "parse_preference",
    "parse_rubric_output",
    "parse_strongreject_output",
    "refusal_match",
    "refusal_rate",
    "register_judge",
    "strongreject_score",
    "verdict_of",
]
