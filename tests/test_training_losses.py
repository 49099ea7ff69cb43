"""Training objectives: the token-wise constrained loss against its formula and its small-beta limit, the beta
schedule, the safety/utility mixture."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from alignscope.testing import tiny_local_model
from alignscope.training.chat_data import ChatCollator, tokenize_conversation
from alignscope.training.losses import (
    BetaSchedule,
    constrained_token_loss,
    mixture_loss,
    shifted_token_logprobs,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_beta_schedule_defaults_follow_the_paper():
    betas = BetaSchedule()(torch.arange(1, 9))
    assert betas.tolist() == pytest.approx([0.5, 2, 2, 2, 2, 0.1, 0.1, 0.1])
    assert BetaSchedule(first=1.0, early=3.0, early_until=2, late=0.2)(
        torch.tensor([1, 2, 3])
    ).tolist() == pytest.approx([1.0, 3.0, 0.2])


def test_constrained_loss_equals_the_formula_on_hand_values():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -4.0, 0.0]])
    betas = torch.tensor([[0.5, 2.0, 0.1], [0.5, 2.0, 0.1]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # by hand: (2 / b) * -log(sigmoid(b * (logp - ref))) per trained token, then the mean over 5 tokens
    terms = [
        (2 / 0.5) * -math.log(_sigmoid(0.5 * 0.5)),
        (2 / 2.0) * -math.log(_sigmoid(2.0 * -1.0)),
        (2 / 0.1) * -math.log(_sigmoid(0.0)),
        (2 / 0.5) * -math.log(_sigmoid(0.5 * -1.0)),
        (2 / 2.0) * -math.log(_sigmoid(2.0 * 3.0)),
    ]
    expected = sum(terms) / 5
    assert constrained_token_loss(logps, ref, betas, mask).item() == pytest.approx(expected, rel=1e-6)


def _batch(model):
    conv = [
        {"role": "user", "content": "Write a poem about the sea."},
        {"role": "assistant", "content": "The sea is wide and the capital of France is Paris."},
    ]
    ex = tokenize_conversation(model, conv)
    return ChatCollator(
        int(model.tokenizer.pad_token_id), ("input_ids", "labels", "attention_mask", "response_pos")
    )([ex.to_dict()])


def _grads(model, loss_fn) -> torch.Tensor:
    model.zero_grad()
    loss_fn().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("template", ["chatml", "llama2"])
def test_constrained_gradient_matches_cross_entropy_for_small_beta(template):
    lm = tiny_local_model(seed=1, template=template)
    batch = _batch(lm)
    reference = copy.deepcopy(lm.model)  # the "aligned" model; the trained one is then moved away from it
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ref_logps, _ = shifted_token_logprobs(reference(input_ids=batch["input_ids"]).logits, batch["labels"])
    model = lm.model.train()

    def ce():
        logps, mask = shifted_token_logprobs(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        return -(logps * mask).sum() / mask.sum()

    def constrained(beta: float):
        def f():
            logps, mask = shifted_token_logprobs(model(input_ids=batch["input_ids"]).logits, batch["labels"])
            return constrained_token_loss(logps, ref_logps, torch.full_like(logps, beta), mask)

        return f

    g_ce = _grads(model, ce)
    g_small = _grads(model, constrained(1e-4))
    cos = torch.nn.functional.cosine_similarity(g_ce, g_small, dim=0).item()
    assert cos > 0.9999
    # the gradient is -2 sigmoid(-beta delta) grad log p: for small beta its scale is CE's too
    assert g_small.norm().item() == pytest.approx(g_ce.norm().item(), rel=1e-2)
    # a large beta reweights the tokens, so the direction departs from CE's
    g_large = _grads(model, constrained(20.0))
    assert torch.nn.functional.cosine_similarity(g_ce, g_large, dim=0).item() < cos


def test_constrained_loss_at_the_reference_has_the_ce_gradient_for_any_beta():
    """At the start of training the model is the reference (delta = 0): sigmoid(0) = 1/2 makes the gradient
    exactly cross-entropy's, whatever beta is."""
    lm = tiny_local_model(seed=2)
    batch = _batch(lm)
    model = lm.model.train()
    with torch.no_grad():
        ref, _ = shifted_token_logprobs(model(input_ids=batch["input_ids"]).logits, batch["labels"])

    def loss(beta):
        def f():
            logps, mask = shifted_token_logprobs(model(input_ids=batch["input_ids"]).logits, batch["labels"])
            betas = (
                BetaSchedule()(batch["response_pos"][:, 1:]) if beta is None else torch.full_like(logps, beta)
            )
            return constrained_token_loss(logps, ref, betas, mask)

        return f

    def ce():
        logps, mask = shifted_token_logprobs(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        return -(logps * mask).sum() / mask.sum()

    g_ce = _grads(model, ce)
    for beta in (None, 0.5, 5.0):
        assert torch.allclose(_grads(model, loss(beta)), g_ce, atol=1e-6)


def test_shifted_logprobs_align_with_next_tokens():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]))
    labels = torch.tensor([[-100, 1, 2]])
    logps, mask = shifted_token_logprobs(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert logps[0].tolist() == pytest.approx([math.log(0.2), math.log(0.1)], rel=1e-5)


def test_mixture_loss_weights_the_groups():
    nll = torch.tensor([[1.0, 3.0], [2.0, 0.0], [4.0, 4.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    group = torch.tensor([1, 1, 0])
    safety = (1 + 3 + 2) / 3
    utility = 4.0
    assert mixture_loss(nll, mask, group, 0.2).item() == pytest.approx(0.2 * safety + 0.8 * utility)
    # one group only: that group's CE
    assert mixture_loss(nll[:2], mask[:2], group[:2], 0.2).item() == pytest.approx(safety)
