"""Grounding supervision for stage 2: where in the picture the language model looks when it reads a word.

The chat model must answer "What color is the triangle?" by finding the triangle's patches and reading their
colour: a look-up keyed by shape. Next-token loss alone never forms it at our size (the image tokens carry
colour-given-shape at 99.7% to a one-head probe, yet the model answers colour at ~58%). So, as an auxiliary loss,
attention heads are taught where to look, each patch weighted by how much of it the objects' boxes cover:

- layer 0, head 0: at every shape word after the picture ("triangle", "triangles"), the objects of that shape;
- layer 0, head 1: at every colour word, the objects of that colour;
- layer 1, head 0 (the second hop): at the token right after a shape word, where the model goes on to say
  something about it ("The triangle is" -> colour), the same objects (only those of the colour named just
  before the shape word, if one is: "the red triangle").

The loss is the cross-entropy of each head's attention (the real causal softmax over the whole sequence,
computed from the layer's input) against that distribution.

Only the teacher's symbolic scene is used, never the answer, so it is the same kind of supervision as the
bounding boxes the paper gives its text-only teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LlavaForConditionalGeneration
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from llava.data.world import Scene
from llava.model.tiny import COLORS, SHAPES
from llava.train.clip import box_cover
from llava.train.sequences import Example

SHAPE_HEAD, COLOR_HEAD = (0, 0), (0, 1)  # (layer, head) that learn to look from shape / colour words
NEXT_HEAD = (1, 0)  # ... from the token after a shape word


@dataclass(frozen=True, slots=True)
class Target:
    position: int  # the query token
    layer: int
    head: int
    image_start: int  # first image token
    patches: torch.Tensor  # (n_image_tokens,) where the head should look, sums to 1


def word_ids(tokenizer) -> dict[int, tuple[str, str]]:
    """Token id -> ("shape" | "color", word) for the words whose objects a head learns to find.

    Only words that are one token with their leading space are supervised: a word split into pieces
    ("Triangle" -> T/ri/angle) has no single query position that means it.
    """
    words = [("shape", s, w) for s in SHAPES for w in (s, s + "s")] + [("color", c, c) for c in COLORS]
    out = {}
    for kind, key, w in words:
        ids = tokenizer(" " + w, add_special_tokens=False).input_ids
        if len(ids) == 1:
            out[ids[0]] = (kind, key)
    return out


def example_targets(
    example: Example, scene: Scene, words: dict[int, tuple[str, str]], image_token_id: int, n_image_tokens: int
) -> list[Target]:
    """The supervised positions of one example: its shape and colour words after the picture whose
    objects are in the scene (a question about an absent shape has nothing to look at), and the tokens
    right after those shape words."""
    ids = example.input_ids
    if image_token_id not in ids:
        return []
    start = ids.index(image_token_id)
    grid = int(round(n_image_tokens**0.5))
    if grid * grid != n_image_tokens:
        raise ValueError(f"{n_image_tokens} image tokens are not a square grid")
    out = []
    for pos in range(start + n_image_tokens, len(ids)):
        if ids[pos] not in words:
            continue
        kind, key = words[ids[pos]]
        objects = [o for o in scene.objects if (o.shape if kind == "shape" else o.color) == key]
        if not objects:
            continue
        out.append(Target(pos, *(SHAPE_HEAD if kind == "shape" else COLOR_HEAD), start, _cover(objects, grid)))
        if kind == "shape" and pos + 1 < len(ids):
            before = words.get(ids[pos - 1])
            named = [o for o in objects if before is not None and before[0] == "color" and o.color == before[1]]
            out.append(Target(pos + 1, *NEXT_HEAD, start, _cover(named or objects, grid)))
    return out


def _cover(objects, grid: int) -> torch.Tensor:
    cover = sum(box_cover(o.box, grid) for o in objects)
    return cover / cover.sum()


def grounding_targets(
    examples: Sequence[Example], scenes: dict[str, Scene], tokenizer, image_token_id: int, n_image_tokens: int
) -> list[list[Target]]:
    """Targets of every example, in order (empty for text-only examples)."""
    words = word_ids(tokenizer)
    return [
        example_targets(e, scenes[e.image], words, image_token_id, n_image_tokens) if e.image is not None else []
        for e in examples
    ]


def attention_logprobs(
    model: LlavaForConditionalGeneration,
    layer_input: torch.Tensor,
    layer_index: int,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    heads: torch.Tensor,
) -> torch.Tensor:
    """(n, T) log attention of LM layer `layer_index`, head `heads[i]`, from `positions[i]` of batch row
    `rows[i]`, over the whole (causal, unpadded) sequence: what the layer's softmax computes from its input
    `layer_input` (B, T, H)."""
    lm = model.model.language_model
    layer = lm.layers[layer_index]
    attn = layer.self_attn
    if attn.num_key_value_groups != 1:
        raise ValueError("grounding supports LMs with as many key/value heads as query heads")
    B, T, _ = layer_input.shape
    x = layer.input_layernorm(layer_input)
    cos, sin = lm.rotary_emb(x, torch.arange(T, device=x.device)[None])
    q = attn.q_proj(x).view(B, T, -1, attn.head_dim).transpose(1, 2)  # (B, heads, T, hd)
    k = attn.k_proj(x).view(B, T, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    scores = torch.einsum("nd,ntd->nt", q[rows, heads, positions], k[rows, heads]) * attn.scaling  # (n, T)
    visible = (torch.arange(T, device=x.device)[None] <= positions[:, None]) & attention_mask[rows].bool()
    return scores.float().masked_fill(~visible, float("-inf")).log_softmax(-1)


def grounding_loss(
    model: LlavaForConditionalGeneration,
    layer_inputs: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    targets: Sequence[Sequence[Target]],
) -> torch.Tensor:
    """Mean cross-entropy of the supervised heads' attention against their targets; `targets[b]` are those of
    batch row b, `layer_inputs[l]` (B, T, H) the input of decoder layer l. Zero when the batch has none."""
    flat = [(b, t) for b, row in enumerate(targets) for t in row]
    if not flat:
        return layer_inputs[0].new_zeros(())
    needed = layers_needed(targets)
    if needed > len(layer_inputs):
        raise ValueError(f"targets reach layer {needed - 1}; only {len(layer_inputs)} layer inputs kept")
    losses = []
    for layer in sorted({t.layer for _, t in flat}):
        here = [(b, t) for b, t in flat if t.layer == layer]
        device = layer_inputs[layer].device
        rows, positions, heads = (
            torch.tensor(v, device=device) for v in zip(*[(b, t.position, t.head) for b, t in here], strict=True)
        )
        logp = attention_logprobs(model, layer_inputs[layer], layer, attention_mask, rows, positions, heads)
        want = torch.zeros_like(logp)
        for n, (_, t) in enumerate(here):
            want[n, t.image_start : t.image_start + len(t.patches)] = t.patches.to(device)
        losses.append(-(want * logp.masked_fill(want == 0, 0.0)).sum(-1))
    return torch.cat(losses).mean()


def layers_needed(targets: Sequence[Sequence[Target]]) -> int:
    """How many decoder-layer inputs `grounding_loss` needs for these targets."""
    return 1 + max((t.layer for row in targets for t in row), default=0)
