"""Per-token KL against a brute-force computation, one prefix at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignscope.analysis.token_kl import kl_rows, per_token_kl
from alignscope.models import ModelError, user_turn
from alignscope.testing import tiny_local_model


def brute_force_kl(model, reference, convo, response):  # type: ignore[no-untyped-def]
    prompt = model.encode_prompt(convo)
    resp = model.response_ids(response)
    out = []
    for k in range(len(resp)):
        ids = torch.tensor([prompt + resp[:k]])
        with torch.no_grad():
            p = torch.log_softmax(model.model(ids).logits[0, -1], -1)
            q = torch.log_softmax(reference.model(ids).logits[0, -1], -1)
        out.append(float((p.exp() * (p - q)).sum()))
    return out


def test_per_token_kl_matches_brute_force() -> None:
    a, b = tiny_local_model(seed=0), tiny_local_model(seed=1)
    b.tokenizer = a.tokenizer  # same vocabulary by construction; share the object for the identity check
    convos = [user_turn("How do I do this?"), user_turn("Explain")]
    responses = ["Sure, here is how to do it.", "Sure"]
    result = per_token_kl(a, b, convos, responses, max_tokens=64, batch_size=2)
    for i, (c, r) in enumerate(zip(convos, responses, strict=True)):
        expected = brute_force_kl(a, b, c, r)
        got = result.per_pair[i, : len(expected)]
        assert np.allclose(got, expected, atol=1e-4)
        assert np.isnan(result.per_pair[i, len(expected) :]).all()
    assert result.count[0] == 2 and result.count[-1] == 1
    assert result.mean[-1] == pytest.approx(result.per_pair[0, -1])


def test_kl_of_identical_models_is_zero() -> None:
    a = tiny_local_model(seed=5)
    result = per_token_kl(a, a, [user_turn("x")], ["Sure, here is"])
    assert np.allclose(result.mean, 0.0, atol=1e-6)


def test_kl_rows_is_nonnegative_and_asymmetric() -> None:
    torch.manual_seed(0)
    p, q = torch.randn(4, 10), torch.randn(4, 10)
    assert (kl_rows(p, q) >= 0).all()
    assert not torch.allclose(kl_rows(p, q), kl_rows(q, p))


def test_different_tokenizers_are_refused() -> None:
    from alignscope.testing import tiny_local_model as make

    a = make(seed=0)
    b = make(seed=0, template="llama2")
    b.tokenizer.add_tokens(["<extra-token>"])
    with pytest.raises(ModelError, match="different tokenizers"):
        per_token_kl(a, b, [user_turn("x")], ["y"])
