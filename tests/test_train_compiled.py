"""Compiled layers train what the plain ones train, and the modules come back plain."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llava.train import compiled
from llava.train.compiled import compiled_layers


def _lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=90, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    return LlamaForCausalLM(config)


def _loss_and_grads(lm: LlamaForCausalLM, ids: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    lm.zero_grad(set_to_none=True)
    loss = lm(ids, labels=ids).loss
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in lm.parameters()]


@pytest.mark.skipif(not compiled.compiler_found(), reason="inductor needs a C++ compiler")
def test_compiled_layers_compute_the_plain_loss_and_gradients():
    lm = _lm()
    batches = [torch.randint(0, 90, (3, n), generator=torch.Generator().manual_seed(n)) for n in (11, 23, 17)]
    plain = [_loss_and_grads(lm, ids) for ids in batches]
    with compiled_layers(lm.model.layers):
        assert all("forward" in layer.__dict__ for layer in lm.model.layers)
        ours = [_loss_and_grads(lm, ids) for ids in batches]  # three lengths: one graph with dynamic shapes
    assert all("forward" not in layer.__dict__ for layer in lm.model.layers)  # the class's forward again
    for (loss, grads), (want, want_grads) in zip(ours, plain, strict=True):
        assert loss == pytest.approx(want, rel=1e-5)
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_without_a_compiler_the_layers_run_plain(monkeypatch):
    lm = _lm()
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"), compiled_layers(lm.model.layers):
        assert all("forward" not in layer.__dict__ for layer in lm.model.layers)
    with compiled_layers(lm.model.layers, enabled=False):
        assert all("forward" not in layer.__dict__ for layer in lm.model.layers)
