"""oneDNN float32 linears: the same float32 numbers as torch's (to summation order), gradients untouched, and
the layers restored afterwards."""

from __future__ import annotations

import pytest
import torch

from alignscope.models.fast_linear import fp32_linears, onednn_linear_available, use_onednn
from alignscope.testing import tiny_local_model

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="torch built without oneDNN's linear")

TOL = {"atol": 1e-5, "rtol": 1e-5}
"""oneDNN and torch's BLAS differ only in summation order: float32 rounding, well inside this."""


def _patched(model: torch.nn.Module) -> list[bool]:
    return ["forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Linear]


def test_logits_match_torch_and_layers_are_restored() -> None:
    model = tiny_local_model(seed=5).model
    ids = torch.randint(0, 100, (3, 12))
    with torch.no_grad():
        ref = model(ids).logits
        with fp32_linears(model, "onednn") as on:
            assert on and all(_patched(model))
            fast = model(ids).logits
    assert not any(_patched(model))
    torch.testing.assert_close(fast, ref, **TOL)


def test_nested_blocks_restore_at_the_last_exit() -> None:
    model = tiny_local_model(seed=5).model
    with fp32_linears(model, "onednn"):
        with fp32_linears(model, "onednn"):
            pass
        assert all(_patched(model))
    assert not any(_patched(model))


def test_gradients_run_torchs_own_linear() -> None:
    model = tiny_local_model(seed=6).model
    ids = torch.randint(0, 100, (2, 9))
    model(ids).logits.sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with fp32_linears(model, "onednn"):
        model(ids).logits.sum().backward()
    for p, r in zip(model.parameters(), ref, strict=True):
        assert torch.equal(p.grad, r)


def test_a_changed_weight_is_seen() -> None:
    model = tiny_local_model(seed=7).model
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad(), fp32_linears(model, "onednn"):
        before = model(ids).logits
        model.lm_head.weight.mul_(2.0)  # in place: the packed copy must be remade
    with torch.no_grad(), fp32_linears(model, "onednn"):
        after = model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(after, model(ids).logits, **TOL)
    assert not torch.allclose(before, after)


def test_torch_mode_never_switches() -> None:
    model = tiny_local_model(seed=5).model
    assert not use_onednn("torch")
    with fp32_linears(model, "torch") as on:
        assert not on and not any(_patched(model))
    with pytest.raises(ValueError, match="unknown float32 linear mode"):
        use_onednn("fastest")


def test_packed_bf16_copy_gives_the_same_numbers() -> None:
    import copy

    from alignscope.models.fast_linear import pack_linears

    model = tiny_local_model(seed=9).model
    plain = copy.deepcopy(model).to(torch.bfloat16)
    packed = copy.deepcopy(model).to(torch.bfloat16)
    assert pack_linears(packed)
    ids = torch.randint(0, 100, (3, 10))
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).logits, plain(ids).logits, atol=0, rtol=0)
