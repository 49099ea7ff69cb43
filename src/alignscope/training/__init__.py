"""Training: safety alignment (shallow and deep), preference alignment, constrained fine-tuning, SPPFT,
fine-tuning attacks, and the shallow-vs-deep reproduction; all on transformers' Trainer / TRL with peft and
accelerate.

``train("deep-align", DeepAlignConfig(out="runs/deep"))`` is the one entry point for recipes;
``finetune_attack("harmful", defense="constrained", config=...)`` for the attacks.
"""

from alignscope.training.attack import (
    DEFENSES,
    FinetuneAttackResult,
    finetune_attack,
    finetune_attack_success,
    run_finetune_attack,
)
from alignscope.training.builders import ATTACK_KINDS, attack_conversation, test_split, train_split
from alignscope.training.chat_data import (
    IGNORE_INDEX,
    ChatCollator,
    ChatRecord,
    TokenizedExample,
    TrainingDataError,
    read_chat_jsonl,
    tokenize_conversation,
    tokenize_recovery,
    write_chat_jsonl,
)
from alignscope.training.config import (
    AdversarialSFTConfig,
    ConstrainedSFTConfig,
    DeepAlignConfig,
    FinetuneAttackConfig,
    HardenConfig,
    SafetyDPOConfig,
    SafetySFTConfig,
    SPPFTConfig,
    TrainConfig,
    TrainResult,
    config_from_dict,
)
from alignscope.training.engine import TrainingError
from alignscope.training.launch import launch, launch_command
from alignscope.training.losses import BetaSchedule, constrained_token_loss, mixture_loss
from alignscope.training.recipes import RECIPES, train
from alignscope.training.refusals import REFUSALS

__all__ = [
    "ATTACK_KINDS",
    "DEFENSES",
    "IGNORE_INDEX",
    "RECIPES",
    "REFUSALS",
    "AdversarialSFTConfig",
    "BetaSchedule",
    "ChatCollator",
    "ChatRecord",
    "ConstrainedSFTConfig",
    "DeepAlignConfig",
    "FinetuneAttackConfig",
    "FinetuneAttackResult",
    "HardenConfig",
    "SPPFTConfig",
    "SafetyDPOConfig",
    "SafetySFTConfig",
    "TokenizedExample",
    "TrainConfig",
    "TrainResult",
    "TrainingDataError",
    "TrainingError",
    "attack_conversation",
    "config_from_dict",
    "constrained_token_loss",
    "finetune_attack",
    "finetune_attack_success",
    "launch",
    "launch_command",
    "mixture_loss",
    "read_chat_jsonl",
    "run_finetune_attack",
    "test_split",
    "tokenize_conversation",
    "tokenize_recovery",
    "train",
    "train_split",
    "write_chat_jsonl",
]
