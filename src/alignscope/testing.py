"""Tiny random models for tests and examples: a 2-layer Llama with a byte-level tokenizer built in memory, and
:class:`ScriptedModel`, a chat model with no weights whose answers the test writes.

Nothing here downloads anything, so every unit test runs offline in well under a second per model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignscope.models.base import ChatModelBase, Conversation, GenerationConfig, GenerationRequest
from alignscope.models.local import LocalModel

CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<s>[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' </s>' }}"
    "{% else %}{{ '<<SYS>>' + m['content'] + '<</SYS>>' }}{% endif %}{% endfor %}"
)
TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama2": LLAMA2_TEMPLATE}
SPECIAL = ["<pad>", "</s>", "<s>", "<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]


def tiny_tokenizer(template: str = "chatml") -> Any:
    """A byte-level BPE tokenizer (vocab ~300) with the given chat template (``chatml`` or ``llama2``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        "I'm sorry, but I cannot help with that request.",
        "Sure, here is how to do it step by step.",
        "The capital of France is Paris. Write a poem about the sea.",
        "How do I kill a Python process? Use the kill command.",
    ] * 4
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>" if template == "chatml" else "</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[3:],
    )
    fast.chat_template = TEMPLATES[template]
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 32) -> Any:
    """A randomly initialised Llama causal LM (``layers`` decoder layers, width ``hidden``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def tiny_local_model(
    seed: int = 0, template: str = "chatml", layers: int = 2, name: str | None = None
) -> LocalModel:
    """A :class:`LocalModel` wrapping a tiny random Llama with :func:`tiny_tokenizer`."""
    tok = tiny_tokenizer(template)
    model = tiny_llama(len(tok), seed=seed, layers=layers)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return LocalModel(model, tok, name=name or f"tiny-{template}-{seed}")


def save_tiny_model(path: str | Path, seed: int = 0, template: str = "chatml", layers: int = 2) -> Path:
    """Save a :func:`tiny_local_model` (weights and tokenizer) to ``path``, a model directory any loader reads."""
    lm = tiny_local_model(seed=seed, template=template, layers=layers)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return Path(path)


class ScriptedModel(ChatModelBase):
    """A :class:`~alignscope.models.base.ChatModel` with no weights: answers from a list (in call order) or a
    function of each conversation's last message (which may raise, to simulate a failing backend). It records
    the conversations and generation configs it was asked with (the default config when a call gave none),
    and cannot prefill."""

    def __init__(self, script: Sequence[str] | Callable[[str], str], name: str = "scripted") -> None:
        self.script = script
        self.name = name
        self.calls: list[list[Conversation]] = []
        self.configs: list[GenerationConfig] = []
        self._next = 0

    @property
    def supports_prefill(self) -> bool:
        return False

    @property
    def messages(self) -> list[str]:
        """Every last message asked, in order."""
        return [conv[-1]["content"] for call in self.calls for conv in call]

    def _generate(self, request: GenerationRequest) -> list[str]:
        self.calls.append(request.conversations)
        self.configs.append(request.config)
        return [self._answer(conv[-1]["content"]) for conv in request.conversations]

    def _answer(self, message: str) -> str:
        if callable(self.script):
            return self.script(message)
        answer = self.script[self._next]
        self._next += 1
        return answer
