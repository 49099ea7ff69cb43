"""The plumbing every recipe shares: open the run directory, load the starting model, add LoRA adapters or
freeze layers, run transformers' Trainer (resumable), save a model that :func:`alignscope.models.load_model`
loads.

Multi-process (``accelerate launch``): every process runs the same recipe; the main process builds the run
directory and any generated data first (``main_process_first``) so the others read its caches; the Trainer
shards the batches; only the main process writes files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignscope.models.loading import load_model
from alignscope.models.local import LocalModel
from alignscope.runs.store import RunDir
from alignscope.training.chat_data import ChatCollator, ChatRecord, TokenizedExample, write_chat_jsonl
from alignscope.training.config import RECIPE_DEFAULTS, TrainConfig, TrainResult
from alignscope.training.losses import AlignTrainer, BetaSchedule, shifted_token_logprobs

log = logging.getLogger("alignscope.training")

PROVENANCE_FILE = "alignscope_training.json"
"""Written next to every saved adapter or model: recipe, config, metrics."""


class TrainingError(RuntimeError):
    """A recipe cannot run as configured (missing data, conflicting settings, distributed misuse)."""


@dataclass
class Session:
    """An opened training run: its directory, the starting model, and the accelerate process state."""

    recipe: str
    config: TrainConfig
    run: RunDir
    model: LocalModel
    state: Any

    @property
    def is_main(self) -> bool:
        return bool(self.state.is_main_process)

    def main_first(self) -> Any:
        """Context manager: the main process runs the block first, then the others (who then hit its
        caches)."""
        return self.state.main_process_first()

    def save_data(
        self, records: Sequence[ChatRecord] | Sequence[dict[str, Any]], name: str = "train.jsonl"
    ) -> None:
        """Keep the built training data in the run directory (``data/<name>``), so a run can be audited and
        re-trained from the file with ``data=``."""
        if not self.is_main:
            return
        path = self.run.path / "data" / name
        if records and isinstance(records[0], ChatRecord):
            write_chat_jsonl(path, records)  # type: ignore[arg-type]
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
            )


def open_session(
    recipe: str, config: TrainConfig, command: str | None = None, run: RunDir | None = None
) -> Session:
    """Create (or with ``config.resume`` reopen) the run directory (recorded as ``command``, default
    ``train <recipe>``) and load the starting model. ``run``: an already-made run directory to train into
    instead (``config.out`` is then ignored)."""
    from accelerate import PartialState

    # on a machine without CUDA accelerate only sees the multi-process (gloo) launch when asked for the CPU
    state = PartialState(cpu=config.device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1 and config.out is None and run is None:
        raise TrainingError(
            "under a multi-process launch every process must write to the same run: pass out="
        )
    record = {**config.to_dict(), "recipe": recipe}
    with state.main_process_first():
        if run is not None:
            run = run if state.is_main_process else RunDir.open(run.path)
        elif state.is_main_process:
            run = RunDir.create(
                command or f"train {recipe}", record, out=config.out, root="runs", resume=bool(config.resume)
            )
        else:
            run = RunDir.open(config.out)  # type: ignore[arg-type]
    device = config.device or (str(state.device) if state.num_processes > 1 else None)
    model = load_model(config.model, device=device, dtype=config.dtype)
    torch.manual_seed(config.seed)
    return Session(recipe, config, run, model, state)


def optimiser_settings(recipe: str, config: TrainConfig) -> dict[str, Any]:
    """Learning rate, warm-up and AdamW beta1: the config's values, else the recipe's defaults."""
    d = RECIPE_DEFAULTS[recipe]
    lr = (
        config.learning_rate
        if config.learning_rate is not None
        else d["full_lr" if config.full_finetune else "lora_lr"]
    )
    warmup = config.warmup_steps if config.warmup_steps is not None else d["warmup_steps"]
    beta1 = config.adam_beta1 if config.adam_beta1 is not None else d["adam_beta1"]
    return {"learning_rate": float(lr), "warmup_steps": int(warmup), "adam_beta1": float(beta1)}


def lora_config(config: TrainConfig, model: Any, frozen_layers: tuple[int, int] | None = None) -> Any:
    """peft's LoraConfig for ``config`` (r, alpha, dropout, targets); with ``frozen_layers`` no adapter is
    placed on those layers (SPPFT through the freezing utility)."""
    from peft import LoraConfig

    kwargs: dict[str, Any]
    if frozen_layers is not None:
        from alignscope.training.freezing import lora_layer_config

        kwargs = lora_layer_config(model, frozen_layers)
    elif config.lora_target_modules == "all-linear":
        kwargs = {"target_modules": "all-linear"}
    else:
        kwargs = {"target_modules": [m.strip() for m in config.lora_target_modules.split(",") if m.strip()]}
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        task_type="CAUSAL_LM",
        **kwargs,
    )


def prepare_model(session: Session, frozen_layers: tuple[int, int] | None = None) -> Any:
    """The module to train: the starting model wrapped in LoRA adapters, or (full fine-tuning) itself with the
    ``frozen_layers`` weights frozen."""
    cfg = session.config
    model = session.model.model
    if cfg.full_finetune:
        if frozen_layers is not None:
            from alignscope.training.freezing import freeze_layers

            frozen = freeze_layers(model, frozen_layers)
            log.info("SPPFT: %s", frozen.to_dict())
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg, model, frozen_layers))


@torch.inference_mode()
def reference_logprobs(
    model: Any, examples: Sequence[TokenizedExample], pad_id: int, batch_size: int = 4
) -> list[list[float]]:
    """Log-probability of every token under ``model`` (the reference for the constrained objective), computed
    once.

    Returns one list per example, aligned with ``input_ids``: entry ``t`` is ``log p(input_ids[t] |
    input_ids[<t])`` where ``labels[t]`` is trained, 0.0 elsewhere (and at ``t = 0``).
    """
    collate = ChatCollator(pad_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(examples), batch_size):
        part = [e.to_dict() for e in examples[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(part).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, _ = shifted_token_logprobs(logits, batch["labels"])
        for row, ex in enumerate(part):
            n = len(ex["input_ids"])
            out.append([0.0, *logps[row, : n - 1].float().cpu().tolist()])
    model.train(was_training)
    return out


def fit(
    session: Session,
    examples: Sequence[TokenizedExample],
    objective: str = "ce",
    alpha: float = 0.2,
    beta_schedule: BetaSchedule | None = None,
    frozen_layers: tuple[int, int] | None = None,
    defaults_from: str | None = None,
) -> TrainResult:
    """Train on ``examples`` with transformers' Trainer and save the result; see :class:`AlignTrainer` for the
    objectives. Optimiser settings the config leaves as None come from the recipe ``defaults_from`` (default:
    the session's recipe). Resumes from the newest checkpoint when ``config.resume`` is set."""
    from datasets import Dataset
    from transformers import TrainingArguments

    cfg = session.config
    tok = session.model.tokenizer
    rows = [{**e.to_dict(), "length": len(e.input_ids)} for e in examples]
    keep = ["input_ids", "labels", "attention_mask"]
    if objective == "mixture":
        keep.append("group")
    if objective == "constrained":
        keep += ["response_pos", "ref_logps"]
        refs = reference_logprobs(session.model.model, examples, int(tok.pad_token_id))
        for r, ref in zip(rows, refs, strict=True):
            r["ref_logps"] = ref
    model = prepare_model(session, frozen_layers)
    opt = optimiser_settings(defaults_from or session.recipe, cfg)
    grouped = cfg.group_by_length and objective != "mixture"
    args = TrainingArguments(**training_arguments(session, opt, grouped))
    trainer = AlignTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=ChatCollator(int(tok.pad_token_id), keep),
        processing_class=tok,
        objective=objective,
        alpha=alpha,
        beta_schedule=beta_schedule,
    )
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_checkpoint(session))
    seconds = time.perf_counter() - start
    tokens = sum(len(e.input_ids) for e in examples)
    metrics = {
        "train_loss": output.training_loss,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "n_examples": len(examples),
        "tokens_per_epoch": tokens,
        "trained_tokens": sum(e.n_trained for e in examples),
        "train_seconds": seconds,
        "log_history": trainer.state.log_history,
        **opt,
    }
    return save_output(session, trainer, metrics)


def training_arguments(
    session: Session, opt: dict[str, Any], group_by_length: bool = False
) -> dict[str, Any]:
    """Keyword arguments for transformers' ``TrainingArguments`` (TRL's configs accept the same)."""
    cfg = session.config
    on_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    return {
        "output_dir": str(session.run.path / "checkpoints"),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": cfg.lr_scheduler,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": [],
        "remove_unused_columns": False,
        "disable_tqdm": not cfg.progress,
        "use_cpu": on_cpu,
        "deepspeed": cfg.deepspeed,
        "dataloader_num_workers": 0,
        "train_sampling_strategy": "group_by_length" if group_by_length else "random",
        **opt,
    }


def resume_checkpoint(session: Session) -> str | bool | None:
    """What to pass as ``resume_from_checkpoint``: the given path, the newest checkpoint of the run, or None
    (nothing to resume: start fresh)."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = session.config.resume
    if isinstance(resume, str) and resume:
        if not Path(resume).is_dir():
            raise TrainingError(f"checkpoint {resume} does not exist")
        return resume
    if resume:
        ckpt_dir = session.run.path / "checkpoints"
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if last is None:
            log.info("no checkpoint in %s: starting from the beginning", ckpt_dir)
        return last
    return None


def save_output(session: Session, trainer: Any, metrics: dict[str, Any]) -> TrainResult:
    """Save the adapter (``<run>/adapter``) or full model (``<run>/model``) with its provenance; main process
    only writes. The adapter's ``base_model_name_or_path`` is the starting model's spec."""
    cfg = session.config
    out = session.run.path / ("model" if cfg.full_finetune else "adapter")
    trainer.save_model(str(out))
    trainer.model.eval()
    if session.is_main:
        adapter_cfg = out / "adapter_config.json"
        if adapter_cfg.exists():
            data = json.loads(adapter_cfg.read_text())
            data["base_model_name_or_path"] = base_spec(cfg.model)
            adapter_cfg.write_text(json.dumps(data, indent=2))
        summary = {k: v for k, v in metrics.items() if k != "log_history"}
        provenance = {
            "recipe": session.recipe,
            "base_model": base_spec(cfg.model),
            "config": cfg.to_dict(),
            "metrics": summary,
        }
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, default=str))
        session.run.write_metrics({**metrics, "recipe": session.recipe, "output": str(out)})
    session.state.wait_for_everyone()
    return TrainResult(
        recipe=session.recipe,
        run_dir=session.run.path,
        output=out,
        base_model=base_spec(cfg.model),
        n_examples=int(metrics["n_examples"]),
        trained_tokens=int(metrics.get("trained_tokens", 0)),
        steps=int(metrics["steps"]),
        train_loss=metrics.get("train_loss"),
        seconds=float(metrics["train_seconds"]),
        metrics=metrics,
    )


def base_spec(spec: str) -> str:
    """The starting model's spec as an adapter should record it: embedded names and hub ids as given, local
    paths made absolute (so the adapter loads from any working directory)."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec
