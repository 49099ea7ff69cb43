"""Re-judge a finished (or partial) run without regenerating: every verdict is replaced, the old records are
kept in ``samples.jsonl.bak``, and metrics and report are rebuilt.

Each judge gets what it needs from the stored sample itself, never from another judge's reading: the prompt,
the forced prefill and the model's own response, apart (model judges read prefill + response; the keyword
judge looks for a refusal in the response that may start inside the prefill).
"""

from __future__ import annotations

from typing import Any

from alignscope.attacks.stage import judge_reads
from alignscope.judges.records import JudgedRecord
from alignscope.runs.store import RunDir


def rejudge_run(run: RunDir, judge_spec: str, device: str | None = None, batch: int = 32) -> int:
    """Replace the verdict of every judged record in ``run`` with ``judge_spec``'s; returns how many."""
    from alignscope.models import load_model
    from alignscope.models.pool import load_judge_for
    from alignscope.report.build import rebuild

    judge = load_judge_for(judge_spec, loader=lambda spec: load_model(spec, device=device))
    records = run.records()
    judged = [i for i, r in enumerate(records) if JudgedRecord.is_judged(r)]
    reads = judge_reads(judge)
    for start in range(0, len(judged), batch):
        part = [(i, JudgedRecord.from_dict(records[i])) for i in judged[start : start + batch]]
        verdicts = judge.judge_batch(
            [r.prompt for _, r in part],
            [r.response for _, r in part],
            [str(r.prefill or "") for _, r in part],
        )
        for (i, r), v in zip(part, verdicts, strict=True):
            records[i] = r.rejudged(v, reads).to_dict()
    run.rewrite_records(records)
    cfg: dict[str, Any] = run.config()
    cfg.setdefault("rejudged_with", []).append(judge_spec)
    cfg["judge"] = judge_spec
    run.write_config(cfg)
    rebuild(run)
    return len(judged)
