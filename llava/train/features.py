"""The frozen vision tower, run once: cached layer -2 patch features, and the LLaVA forward that uses them.

Stage 1 and stage 2 never update the vision tower, so each picture's features are computed once
(`vision_feature_layer=-2`, CLS dropped: the "default" strategy) and the training forward starts at the
projector. `llava_loss` matches `LlavaForConditionalGeneration.forward` on the same inputs (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from llava.train.attention import takes_boolean_mask
from llava.train.sequences import IGNORE, Batch, visible


@torch.no_grad()
def vision_features(
    model: LlavaForConditionalGeneration,
    pixels: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch: int = 256,
) -> torch.Tensor:
    """(N, patches, vision_hidden) bfloat16 features of uint8 pixels (N, 3, H, W), as LLaVA selects them."""
    cfg = model.config
    tower = model.model.vision_tower.eval()
    out = []
    for start in range(0, len(pixels), batch):
        hidden = tower(normalize(pixels[start : start + batch]), output_hidden_states=True).hidden_states
        feats = hidden[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]  # drop CLS
        out.append(feats.to(torch.bfloat16))
    return torch.cat(out)


def llava_logits(
    model: LlavaForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_features: torch.Tensor | None,
    keep_layers: int = 1,
    segments: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Hidden states (B, T, H) of the language model with projected image features in the image slots, and
    the inputs (B, T, H) of its first `keep_layers` decoder layers (the first is the input embeddings). Rows
    packed by `llava.train.sequences.pack` need their `segments` and `position_ids` (`Batch`)."""
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, H)
    if image_features is not None and len(image_features):
        projected = model.model.multi_modal_projector(image_features.float())  # (n_img, P, H)
        slots = (input_ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        if int(slots[..., 0].sum()) != projected.shape[0] * projected.shape[1]:
            raise ValueError("image tokens in the batch do not match the number of image features")
        embeds = embeds.masked_scatter(slots, projected.to(embeds.dtype))
    deeper = keep_layers > 1
    mask = attention_mask if segments is None else packed_mask(model, attention_mask, segments)
    out = model.model.language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids,
        output_hidden_states=deeper,
        use_cache=False,  # training: no key/value cache to fill
    )
    return out.last_hidden_state, out.hidden_states[:keep_layers] if deeper else (embeds,)


def packed_mask(model: LlavaForConditionalGeneration, attention_mask: torch.Tensor, segments: torch.Tensor):
    """The 4D mask (B, 1, T, T) of packed rows that transformers takes as it is: boolean for SDPA, additive for
    the eager attention. Tried, not kept (2043124): an attention function that scores only what this mask lets
    through (each row's prefix causally, then every record against its prefix and itself, batched over the
    batch's records; about a third of the scores) was slower in the chat step for the gathers and scatters:
    0.676 -> 0.735 s on 2 threads, 1.161 -> 1.298 on 1 (`python -m llava.train.bench --pictures 600 --steps 10`,
    AVX-512 BF16 EPYC), though it won alone on a 394-token batch (one layer, 125 -> 75 ms, in float32)."""
    see = visible(attention_mask, segments)[:, None]
    if takes_boolean_mask(model.config.text_config._attn_implementation):
        return see
    return torch.zeros(see.shape).masked_fill(~see, torch.finfo(torch.float32).min)


def llava_loss(model: LlavaForConditionalGeneration, batch: Batch, image_features: torch.Tensor | None) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (assistant) tokens."""
    hidden, _ = llava_logits(
        model, batch.input_ids, batch.attention_mask, image_features, segments=batch.segments,
        position_ids=batch.position_ids,
    )  # fmt: skip
    return next_token_loss(model, hidden, batch.labels)


def next_token_loss(model: LlavaForConditionalGeneration, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the LM head on hidden states (B, T, H) against labels (B, T), IGNORE skipped."""
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])  # (n_targets, vocab): only where there is a loss
    return F.cross_entropy(logits.float(), targets[keep])
