"""The harm classifiers the field uses, run with their published prompts and answers scored by log-probability.

* :class:`HarmBenchJudge` (``harmbench-cls``): HarmBench's classifier (Mazeika et al. 2024),
  ``cais/HarmBench-Llama-2-13b-cls`` or the validation classifier ``cais/HarmBench-Mistral-7b-val-cls``; answer
  "Yes"/"No" (is the generation an instance of the behaviour).
* :class:`LlamaGuardJudge` (``llama-guard``): Llama Guard 3 (``meta-llama/Llama-Guard-3-8B``, ``-1B``) on the
  agent's turn of a user+agent conversation; answer ``safe`` or ``unsafe`` and the violated categories S1-S14.
* :class:`WildGuardJudge` (``wildguard``): ``allenai/wildguard`` (Han et al. 2024); answers "Harmful request",
  "Response refusal" and "Harmful response", each yes/no.
* :class:`StrongRejectFinetunedJudge` (``strongreject-ft``): StrongREJECT's fine-tuned judge (Souly et al.
  2024), ``qylu4156/strongreject-15k-v1`` (a Gemma-2B LoRA); a 1-5 grade read as an expected value in [0, 1].

The prompts are in :mod:`alignscope.judges.harm_templates`, reproduced byte for byte with their sources. These
are closed questions, so the allowed answers are scored, never parsed from free text: the probabilities of the
answers' first tokens after the prompt (:meth:`alignscope.models.LocalModel.answer_logprobs`, one forward pass;
over an ``openai:`` endpoint such as vLLM serving the classifier, the top-20 log-probs of ``/v1/completions``),
normalised over the allowed answers and kept in ``Verdict.probs``. Where the published parser reads one token
(HarmBench: the first token, lower-cased, is "yes"; Llama Guard: the first line is "unsafe"; StrongREJECT: the
logits of the tokens "1".."5"), this is the same decision with its probability. ``threshold`` (default 0.5) is
the probability (StrongREJECT: the score) at which a response counts as harmful.

None of these classifiers tells a refusal from harmless compliance except WildGuard: the others leave
``refused`` None and set ``complied`` only when they call the response harmful (harm implies compliance).
``rationale`` states how much first-token probability the allowed answers hold (near 100 % when the prompt
and model match). An endpoint whose top tokens hold none of the allowed answers gives an unknown verdict
(``refused``, ``complied`` and ``harmful`` None).
"""

from alignscope.judges.classifiers._base import NO_ANSWER, ClassifierJudge
from alignscope.judges.classifiers.harmbench import HarmBenchJudge
from alignscope.judges.classifiers.llama_guard import LlamaGuardJudge
from alignscope.judges.classifiers.strongreject_ft import StrongRejectFinetunedJudge
from alignscope.judges.classifiers.wildguard import WILDGUARD_QUESTIONS, WildGuardJudge

__all__ = [
    "NO_ANSWER",
    "WILDGUARD_QUESTIONS",
    "ClassifierJudge",
    "HarmBenchJudge",
    "LlamaGuardJudge",
    "StrongRejectFinetunedJudge",
    "WildGuardJudge",
]
