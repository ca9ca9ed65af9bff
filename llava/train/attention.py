"""Attention in float32 while the rest of a training step autocasts to bfloat16.

Under CPU autocast, SDPA runs in bfloat16, and at our sizes (head width 32, ~320 tokens a packed row) torch's
CPU flash kernel is slower in bfloat16 than in float32: one layer forward + backward, 14 rows x 8 heads x 320
tokens, 104 against 83 ms on one AVX-512 BF16 thread (the causal flag makes no difference). Attention is about a
third of a chat step, so training turns it to float32 (`training_attention`): more precise and faster. Without
autocast (a float32 run) nothing changes. The checkpoints keep plain "sdpa": this name is for training only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

FLOAT32_SDPA = "sdpa_float32"


def sdpa_float32(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention on float32 copies of q, k, v (B, heads, T, hd), outside autocast; the
    output (B, T, heads, hd) in the value's dtype, as the bfloat16 kernel would have returned it."""
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(value.dtype), weights


AttentionInterface.register(FLOAT32_SDPA, sdpa_float32)
AttentionMaskInterface.register(FLOAT32_SDPA, sdpa_mask)  # the boolean masks SDPA takes


def takes_boolean_mask(implementation: str) -> bool:
    """Whether an attention implementation takes a boolean mask (SDPA) rather than an additive one (eager)."""
    return implementation in ("sdpa", FLOAT32_SDPA)


@contextmanager
def training_attention(model: PreTrainedModel) -> Iterator[None]:
    """`model` attends with `sdpa_float32` inside the block where it used SDPA; as before after it."""
    before = model.config._attn_implementation
    if before != "sdpa":
        yield
        return
    model.set_attn_implementation(FLOAT32_SDPA)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
