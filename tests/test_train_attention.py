"""Training attends in float32 under bfloat16 autocast, and hands the model back as it came."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from llava.train.attention import FLOAT32_SDPA, sdpa_float32, training_attention


def _implementations(model) -> set[str]:
    return {model.config.text_config._attn_implementation, model.config.vision_config._attn_implementation}


def test_training_attention_switches_and_restores(tiny_ckpt):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt).eval()
    assert _implementations(model) == {"sdpa"}
    with training_attention(model):
        assert _implementations(model) == {FLOAT32_SDPA}
    assert _implementations(model) == {"sdpa"}
    with pytest.raises(RuntimeError, match="inside"), training_attention(model):
        raise RuntimeError("inside")
    assert _implementations(model) == {"sdpa"}  # an error in the block restores it too

    eager = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt, attn_implementation="eager").eval()
    with training_attention(eager):
        assert _implementations(eager) == {"eager"}  # asked for eager (attention weights): left alone


def test_sdpa_float32_is_float32_sdpa_rounded_once():
    """Under bf16 autocast (q and k float32 after the rotary embedding, v bfloat16): float32 SDPA of the
    three, rounded once to the value's dtype, where plain SDPA would compute in bfloat16."""
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    v = torch.randn(1, 2, 5, 8).to(torch.bfloat16)
    module = torch.nn.Module()
    module.is_causal = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = sdpa_float32(module, q, k, v, None)
    want = F.scaled_dot_product_attention(q, k, v.float(), is_causal=True).transpose(1, 2)
    assert out.dtype == torch.bfloat16 and weights is None
    assert torch.equal(out, want.to(torch.bfloat16))
