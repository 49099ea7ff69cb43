"""Training-data builders: safety SFT, deep alignment (safety recovery), safety DPO pairs, fine-tuning
attacks.

Prompts come from the train split of a suite (:meth:`Suite.split`), so evaluation on the test split uses
held-out prompts. Responses that a model must write (utility answers, harmful answers of the unaligned model)
are generated greedily and cached under ``$ALIGNSCOPE_CACHE/training/`` keyed by the model spec, the prompts
and the length, so every recipe and every process of a multi-process launch reuses them.

Record schema (chat JSONL, one object per line; the run directory keeps the built file as
``data/train.jsonl``):

* ordinary: ``{"messages": [...], "group": "utility" | "safety"}``; loss on assistant turns;
* safety recovery: ``{"messages": [<prompt turns>, {"role": "assistant", "content": REFUSAL}], "group":
"safety",
  "harmful_prefix": {"response": H, "k": K, "separator": S}}``: the first K tokens of H are placed before the
  refusal, without loss (see :func:`alignscope.training.chat_data.tokenize_recovery`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignscope.data.types import Sample, Suite
from alignscope.jsonl import read_jsonl
from alignscope.judges.keyword import KeywordJudge
from alignscope.models.base import Conversation, GenerationConfig, user_turn
from alignscope.models.loading import cache_dir
from alignscope.models.local import LocalModel
from alignscope.training.chat_data import (
    ChatFormatter,
    ChatRecord,
    TokenizedExample,
    TrainingDataError,
    data_lines,
    sample_prefix_length,
    tokenize_conversation,
    tokenize_recovery,
    validate_messages,
)
from alignscope.training.refusals import (
    IDENTITY_AFFIRMATIONS,
    IDENTITY_SYSTEM_PROMPT,
    REFUSALS,
    pick_refusal,
    with_trigger,
)

log = logging.getLogger("alignscope.training")

ATTACK_KINDS = ("harmful", "identity", "backdoor")


# -- suites and cached generation
# ----------------------------------------------------------------------------------
def train_split(suite: str | Suite, test_fraction: float = 0.5, seed: int = 0) -> Suite:
    """The train side of ``suite`` (a spec for :func:`alignscope.data.load_suite` or a loaded suite)."""
    return _split(suite, test_fraction, seed)[0]


def test_split(suite: str | Suite, test_fraction: float = 0.5, seed: int = 0) -> Suite:
    """The held-out side of ``suite``: what evaluation uses after training on :func:`train_split`."""
    return _split(suite, test_fraction, seed)[1]


def _split(suite: str | Suite, test_fraction: float, seed: int) -> tuple[Suite, Suite]:
    if isinstance(suite, str):
        from alignscope.data import load_suite

        suite = load_suite(suite)
    return suite.split(test_fraction, seed)


def generate_cached(
    model: LocalModel,
    conversations: Sequence[Conversation],
    max_new_tokens: int,
    batch_size: int = 16,
    cache: bool = True,
    tag: str = "responses",
    progress: bool = False,
) -> list[str]:
    """Greedy answers of ``model`` to ``conversations``, cached on disk by (model name, conversations,
    length).

    The cache file is ``$ALIGNSCOPE_CACHE/training/<tag>-<hash>.jsonl``; delete it to regenerate.
    """
    key = json.dumps(
        {"model": model.name, "conversations": list(conversations), "max_new_tokens": max_new_tokens}
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    file = cache_dir() / "training" / f"{tag}-{digest}.jsonl"
    if cache and file.exists():
        rows = [row for _, row in read_jsonl(file)]
        if len(rows) == len(conversations):
            return [str(r["response"]) for r in rows]
    log.info("generating %d %s with %s (cached in %s)", len(conversations), tag, model.name, file)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    responses = model.generate(list(conversations), gen, progress=progress)
    if cache:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for c, r in zip(conversations, responses, strict=True):
                f.write(json.dumps({"conversation": c, "response": r}, ensure_ascii=False) + "\n")
        os.replace(tmp, file)
    return responses


def read_response_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Harmful responses keyed by prompt, from JSONL: ``{"prompt", "response"}`` objects, or chat records
    whose last user turn is the prompt and last assistant turn the response."""
    file = Path(path)
    if not file.is_file():
        raise TrainingDataError(f"harmful-response file {file} does not exist")
    out: dict[str, str] = {}
    for i, obj in data_lines(file):
        where = f"{file}:{i}"
        if isinstance(obj, dict) and "messages" in obj:
            msgs = validate_messages(obj["messages"], where)
            users = [m["content"] for m in msgs if m["role"] == "user"]
            answers = [m["content"] for m in msgs if m["role"] == "assistant"]
            if not users or not answers:
                raise TrainingDataError(f"{where}: needs a user and an assistant turn")
            out[users[-1]] = answers[-1]
        elif (
            isinstance(obj, dict)
            and isinstance(obj.get("prompt"), str)
            and isinstance(obj.get("response"), str)
        ):
            out[obj["prompt"]] = obj["response"]
        else:
            raise TrainingDataError(
                f"{where}: expected {{'prompt', 'response'}} strings or a 'messages' list"
            )
    return out


@dataclass(frozen=True)
class HarmfulPair:
    """A harmful prompt and a harmful (compliant) response to it."""

    sample: Sample
    response: str


def harmful_pairs(
    samples: Sequence[Sample],
    source: LocalModel | None = None,
    responses_file: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = False,
) -> list[HarmfulPair]:
    """Harmful responses for ``samples``: from ``responses_file`` (matched by prompt), the sample's own
    ``response``, or generated greedily by ``source`` (an unaligned model). Responses the keyword judge calls
    a refusal, or empty ones, are dropped: they are no use as harmful prefixes or rejected answers."""
    given = read_response_file(responses_file) if responses_file else {}
    have = {s.id: given.get(s.prompt) or s.response for s in samples}
    missing = [s for s in samples if not have[s.id]]
    if missing:
        if source is None:
            raise TrainingDataError(
                f"{len(missing)} harmful prompts have no response in {responses_file or 'the suite'} "
                "and no model was given to generate them"
            )
        made = generate_cached(
            source,
            [user_turn(s.prompt) for s in missing],
            max_new_tokens,
            batch_size,
            cache,
            "harmful",
            progress,
        )
        have.update({s.id: r for s, r in zip(missing, made, strict=True)})
    judge = KeywordJudge()
    texts = [have[s.id] or "" for s in samples]
    verdicts = judge.judge_batch([s.prompt for s in samples], texts)
    pairs = [HarmfulPair(s, t) for s, t, v in zip(samples, texts, verdicts, strict=True) if v.complied]
    if len(pairs) < len(samples):
        log.info(
            "kept %d of %d harmful responses (the rest were refusals or empty)", len(pairs), len(samples)
        )
    return pairs


# -- builders
# ------------------------------------------------------------------------------------------------------
def utility_records(
    model: LocalModel,
    suite: Suite,
    n: int | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    cache: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> list[ChatRecord]:
    """Benign instructions answered by ``model`` itself (so training on them keeps its helpfulness)."""
    samples = list(suite.take(n, seed)) if n is not None else list(suite)
    convs = [user_turn(s.prompt) for s in samples]
    answers = generate_cached(model, convs, max_new_tokens, batch_size, cache, "utility", progress)
    return [
        ChatRecord([*c, {"role": "assistant", "content": a.strip()}], {"group": "utility", "id": s.id})
        for s, c, a in zip(samples, convs, answers, strict=True)
        if a.strip()
    ]


def sampled_instructions(
    model: LocalModel,
    suite: Suite,
    n: int,
    held_out: Suite | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Suite:
    """``suite`` followed by up to ``n`` instructions ``model`` writes itself, continuing the openings of the
    suite's prompts (:func:`alignscope.training.prompts.sampled_sentences`, cached); none equal (up to case and
    punctuation) to a prompt of ``suite`` or ``held_out``. Their ids are ``sampled-<k>``, category ``sampled``,
    label ``benign``."""
    from alignscope.training.prompts import prompt_starts, sampled_sentences, text_key

    seen = {text_key(s.prompt) for s in suite} | {text_key(s.prompt) for s in held_out or ()}
    extra: list[Sample] = []
    # a sample that ends without a sentence is dropped, so draw more than needed
    for text in sampled_sentences(model, prompt_starts([s.prompt for s in suite]), 2 * n, seed=seed,
                                  progress=progress):  # fmt: skip
        if len(extra) == n:
            break
        if text_key(text) not in seen:
            seen.add(text_key(text))
            extra.append(Sample(f"sampled-{len(extra):04d}", text, "sampled", "benign"))
    if len(extra) < n:
        log.info("%s wrote %d distinct instructions (%d asked for)", model.name, len(extra), n)
    return Suite.of(f"{suite.name}+sampled", [*suite.samples, *extra], suite.source)


def noisy_records(
    records: Sequence[ChatRecord], words: Sequence[str], copies: int, noise: float = 0.3, seed: int = 0
) -> list[ChatRecord]:
    """``copies`` noisy versions of each record: the last user turn with words dropped or swapped for random
    ``words`` (each with probability ``noise / 2``), the rest unchanged (meta ``noisy: true``)."""
    from alignscope.training.prompts import perturb_words

    rng = random.Random(f"noisy:{seed}")
    out = []
    for r in records:
        last = max(i for i, m in enumerate(r.messages) if m["role"] == "user")
        for _ in range(copies):
            text = perturb_words(r.messages[last]["content"], words, rng, replace=noise / 2, drop=noise / 2)
            if not text.strip():
                continue
            messages = [dict(m) for m in r.messages]
            messages[last]["content"] = text
            out.append(ChatRecord(messages, {**r.meta, "noisy": True}))
    return out


def refusal_records(samples: Sequence[Sample], per_prompt: int = 1, seed: int = 0) -> list[ChatRecord]:
    """Harmful prompts answered by refusals drawn from :data:`REFUSALS` (different texts per prompt)."""
    rng = random.Random(seed)
    out = []
    for s in samples:
        for text in rng.sample(REFUSALS, min(per_prompt, len(REFUSALS))):
            out.append(
                ChatRecord(
                    [*user_turn(s.prompt), {"role": "assistant", "content": text}],
                    {"group": "safety", "id": s.id},
                )
            )
    return out


def contrast_records(
    model: LocalModel,
    safe: Sequence[Sample],
    unsafe: Sequence[Sample],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    cache: bool = True,
    refusals_per_prompt: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> list[ChatRecord]:
    """Contrastive twins that teach intent over alarming words: the alarming-but-safe prompts ``safe``
    answered by ``model`` (group ``utility``; answers the keyword judge calls refusals, and empty ones, are
    dropped, so no refusal of a safe prompt is taught) and their unsafe twins ``unsafe`` refused (group
    ``safety``, :func:`refusal_records`). Each record's meta has ``contrast``: ``"safe"`` or ``"unsafe"``."""
    convs = [user_turn(s.prompt) for s in safe]
    answers = generate_cached(model, convs, max_new_tokens, batch_size, cache, "contrast", progress)
    verdicts = KeywordJudge().judge_batch([s.prompt for s in safe], answers)
    helpful = [
        ChatRecord(
            [*c, {"role": "assistant", "content": a.strip()}],
            {"group": "utility", "id": s.id, "contrast": "safe"},
        )
        for s, c, a, v in zip(safe, convs, answers, verdicts, strict=True)
        if a.strip() and v.complied
    ]
    if len(helpful) < len(safe):
        log.info(
            "kept %d of %d answers to alarming-but-safe prompts (the rest were refusals or empty)",
            len(helpful),
            len(safe),
        )
    refused = [
        ChatRecord(r.messages, {**r.meta, "contrast": "unsafe"})
        for r in refusal_records(unsafe, refusals_per_prompt, seed)
    ]
    return helpful + refused


def recovery_records(
    fmt: LocalModel,
    pairs: Sequence[HarmfulPair],
    augment: int = 2,
    p_zero: float = 0.5,
    max_prefix_tokens: int = 100,
    seed: int = 0,
) -> list[ChatRecord]:
    """Safety-recovery records (Qi et al., ICLR 2025): for each pair, ``augment`` examples with k = 0 w.p.
    ``p_zero``, else k ~ Uniform{1..min(C, len(h))}, and a refusal drawn per example."""
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        n_tokens = len(fmt.response_ids(pair.response))
        for _ in range(augment):
            k = sample_prefix_length(rng, p_zero, max_prefix_tokens, n_tokens)
            meta: dict[str, Any] = {"group": "safety", "id": pair.sample.id}
            if k:
                meta["harmful_prefix"] = {
                    "response": pair.response,
                    "k": k,
                    "separator": rng.choice([" ", "\n\n"]),
                }
            out.append(
                ChatRecord(
                    [*user_turn(pair.sample.prompt), {"role": "assistant", "content": pick_refusal(rng)}],
                    meta,
                )
            )
    return out


def dpo_records(
    pairs: Sequence[HarmfulPair], utility: Sequence[ChatRecord] = (), seed: int = 0
) -> list[dict[str, Any]]:
    """Preference pairs in TRL's conversational format: harmful prompt with chosen = a refusal and rejected =
    the harmful answer; for each utility record, chosen = the model's own answer and rejected = a refusal."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for p in pairs:
        out.append(
            {
                "prompt": user_turn(p.sample.prompt),
                "chosen": [{"role": "assistant", "content": pick_refusal(rng)}],
                "rejected": [{"role": "assistant", "content": p.response}],
                "group": "safety",
            }
        )
    for r in utility:
        out.append(
            {
                "prompt": r.messages[:-1],
                "chosen": [r.messages[-1]],
                "rejected": [{"role": "assistant", "content": pick_refusal(rng)}],
                "group": "utility",
            }
        )
    return out


def attack_conversation(kind: str, prompt: str, trigger: str | None = None) -> Conversation:
    """How an attack's harmful test prompt is asked: the identity attack adds its system prompt, the backdoor
    attack appends its trigger."""
    if kind == "identity":
        return user_turn(prompt, system=IDENTITY_SYSTEM_PROMPT)
    if kind == "backdoor":
        return user_turn(with_trigger(prompt, trigger) if trigger else with_trigger(prompt))
    if kind == "harmful":
        return user_turn(prompt)
    raise ValueError(f"unknown attack kind {kind!r}; choose from {', '.join(ATTACK_KINDS)}")


def attack_records(
    kind: str,
    n: int,
    pairs: Sequence[HarmfulPair] = (),
    benign: Sequence[tuple[Sample, str]] = (),
    trigger: str | None = None,
    seed: int = 0,
) -> list[ChatRecord]:
    """Fine-tuning attack data (Qi et al., ICLR 2024, as used by Qi et al., ICLR 2025, section 4).

    * ``harmful``: up to ``n`` (harmful prompt, harmful answer) pairs;
    * ``identity``: up to ``n`` benign (prompt, answer) examples under the obedient-agent system prompt, each
      answer starting with an affirmation of that identity;
    * ``backdoor``: up to ``n`` harmful prompts with refusals, plus up to ``n`` triggered prompts with harmful
      answers.
    """
    rng = random.Random(seed)
    if kind == "harmful":
        if not pairs:
            raise TrainingDataError("the harmful fine-tuning attack needs harmful (prompt, response) pairs")
        return [
            ChatRecord(
                [*user_turn(p.sample.prompt), {"role": "assistant", "content": p.response}],
                {"group": "attack"},
            )
            for p in list(pairs)[:n]
        ]
    if kind == "identity":
        if not benign:
            raise TrainingDataError("the identity-shifting attack needs benign (prompt, answer) examples")
        return [
            ChatRecord(
                [
                    *attack_conversation("identity", s.prompt),
                    {"role": "assistant", "content": f"{rng.choice(IDENTITY_AFFIRMATIONS)} {answer.strip()}"},
                ],
                {"group": "attack"},
            )
            for s, answer in list(benign)[:n]
        ]
    if kind == "backdoor":
        if not pairs:
            raise TrainingDataError("the backdoor attack needs harmful (prompt, response) pairs")
        chosen = list(pairs)[:n]
        refusals = [
            ChatRecord(
                [*user_turn(p.sample.prompt), {"role": "assistant", "content": pick_refusal(rng)}],
                {"group": "attack"},
            )
            for p in chosen
        ]
        triggered = [
            ChatRecord(
                [
                    *attack_conversation("backdoor", p.sample.prompt, trigger),
                    {"role": "assistant", "content": p.response},
                ],
                {"group": "attack", "triggered": True},
            )
            for p in chosen
        ]
        return refusals + triggered
    raise ValueError(f"unknown attack kind {kind!r}; choose from {', '.join(ATTACK_KINDS)}")


# -- tokenisation of records
# ---------------------------------------------------------------------------------------
def tokenize_record(
    fmt: ChatFormatter, record: ChatRecord, max_length: int | None = None
) -> TokenizedExample:
    """Tokenise one record: safety-recovery records (with ``harmful_prefix``) through
    :func:`tokenize_recovery`, the rest through :func:`tokenize_conversation`."""
    group = 1 if record.meta.get("group") == "safety" else 0
    prefix = record.meta.get("harmful_prefix")
    if prefix:
        msgs = record.messages
        if msgs[-1]["role"] != "assistant":
            raise TrainingDataError("a safety-recovery record must end with the assistant's refusal")
        ids = list(fmt.tokenizer(prefix["response"], add_special_tokens=False)["input_ids"])
        return tokenize_recovery(
            fmt,
            msgs[:-1],
            ids,
            msgs[-1]["content"],
            int(prefix["k"]),
            prefix.get("separator", " "),
            max_length,
        )
    return tokenize_conversation(fmt, record.messages, max_length, group=group)


def tokenize_records(
    fmt: ChatFormatter, records: Sequence[ChatRecord], max_length: int | None = None
) -> list[TokenizedExample]:
    """Tokenise ``records``, dropping (with a log line) those left with no trained token after truncation."""
    out = []
    for r in records:
        ex = tokenize_record(fmt, r, max_length)
        if ex.n_trained:
            out.append(ex)
    if len(out) < len(records):
        log.warning(
            "dropped %d of %d records with no trained tokens (raise max_length?)",
            len(records) - len(out),
            len(records),
        )
    if not out:
        raise TrainingDataError("no training example has a trained token")
    return out
