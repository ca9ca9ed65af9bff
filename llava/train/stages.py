"""Stage 1 (projector only, picture/caption pairs) and stage 2 (projector + LM, instruction data).

Both are the same loop over cached vision features; they differ in what is trainable and what data
comes in. The vision tower stays frozen throughout, as in the paper.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from llava.data.world import MAX_OBJECTS
from llava.train.attention import training_attention
from llava.train.clip import center_loss
from llava.train.compiled import compiled_layers
from llava.train.features import llava_logits, next_token_loss
from llava.train.ground import (
    COUNTING_HEADS,
    Target,
    check_heads,
    counted_number,
    grounding_loss,
    grounding_targets,
    layers_needed,
)
from llava.train.loop import History, OptimConfig, train
from llava.train.sequences import IGNORE, Example, collate, length_grouped_batches


@dataclass(slots=True)
class StageConfig:
    name: str  # "stage1", "stage2-chat", ... (names the progress bar and the curves)
    batch_size: int
    optim: OptimConfig
    train_lm: bool  # False: only the projector learns (stage 1); True: projector + language model
    seed: int = 0
    ground_weight: float = 0.0  # weight of the grounding loss (llava.train.ground); 0: next-token loss only
    # the token after a colour + shape absent from the picture looks at the first token (llava.train.ground). On,
    # chat from the shipped stage 1 against the same run off (200 pictures, own/alt renderer): objects named
    # 80/75 -> 88/87% (every object of a 4-object scene 8/5 -> 25/23%), extra mentions 89/108 -> 44/50, count
    # kind 85/83 -> 90/83, but shape 98/98 -> 89/86, colour 89/87 -> 83/83; yes/no 89/92.5 -> 88/93.5: "Yes"
    # to a red triangle beside a red square and a blue triangle; kept off
    ground_absent: bool = False
    # two more heads look at the first token and each object named, equally, so the first token's share counts
    # them (llava.train.ground, `count`); see PipelineConfig.stage2 for what it did
    ground_count: bool = False
    # with ground_count, each object's share of a counting head's look on the patches around its box's centre
    # instead of over its whole box (llava.train.ground, `count_center`); see PipelineConfig.stage2
    ground_count_center: bool = False
    # after a colour word, "object is a" looks at the objects of that colour too ("The blue object is a" ->
    # circle), as the token after a shape word does (llava.train.ground, `linked`)
    ground_link: bool = False
    # in a problem whose text context describes a picture instead of showing it, the look-ups find the objects'
    # phrases in the description as they find patches (llava.train.ground, `described_targets`)
    ground_described: bool = False
    # "Which object is highest?": the word looks at that object, and the answer's words that choose it look at the
    # word, then at the object (llava.train.ground, `extreme_targets`); > 0: on, the two looks at the object
    # weighted that much in the loss
    ground_extreme: float = 0.0
    # every image token an object covers (a quarter or more) reads out that object's centre (x, y) from each decoder
    # layer's output, through linear heads dropped after the stage, as CLIP's `center_weight` does on the tower's
    # layer -2 (`place_loss`); the weight of that mean squared error (picture side = 1); 0: off
    place_weight: float = 0.0
    # with place_weight, the read-out on the first this many decoder layers' outputs only; 0: on every layer
    place_layers: int = 0
    # in a "how many" question of a colour or shape, where a counting head looks from (`ground_count`: the word
    # after "many", the token after the question's noun; `llava.train.ground.asks_count`), the token reads out how
    # many objects that head counts, 0 to MAX_OBJECTS, through a linear classifier per layer (dropped after the
    # stage) on the outputs of the layers from the counting head's own up to layer count_layers - 1
    # (`count_readout_loss`); the weight of that cross-entropy; 0: off
    count_weight: float = 0.0
    count_layers: int = 2
    # a picture's records in one row, sharing the system prompt and image tokens (llava.train.sequences.pack):
    # the same logits per token, about half the tokens with 4 records a picture
    pack: bool = False


def stage_targets(stage: StageConfig, examples: Sequence[Example], scenes, tokenizer, config) -> list[list[Target]]:
    """The grounding targets of `examples` with the stage's `ground_*` options, for the
    LLaVA configuration `config`; `scenes` maps each picture's name to its scene."""
    return grounding_targets(
        examples,
        scenes,
        tokenizer,
        config.image_token_id,
        config.image_seq_length,
        stage.ground_absent,
        stage.ground_count,
        stage.ground_link,
        stage.ground_described,
        stage.ground_extreme,
        stage.ground_count_center,
    )


def set_trainable(model: LlavaForConditionalGeneration, train_lm: bool) -> int:
    """Freeze everything but the projector (and the LM when asked); returns the trainable parameter count."""
    for p in model.parameters():
        p.requires_grad = False
    trainable = list(model.model.multi_modal_projector.parameters())
    if train_lm:
        trainable += list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    for p in trainable:
        p.requires_grad = True
    return sum(p.numel() for p in trainable)


def run_stage(
    model: LlavaForConditionalGeneration,
    examples: Sequence[Example],
    features: torch.Tensor,
    feature_index: dict[str, int],
    cfg: StageConfig,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    eval_every: int = 0,
    progress: bool = True,
    ground: Sequence[Sequence[Target]] | None = None,
    on_step: Callable[[], None] | None = None,
    centers: torch.Tensor | None = None,
) -> History:
    """Train on `examples`, whose pictures' features are rows of `features` named by `feature_index`;
    `ground[i]` are the grounding targets of `examples[i]` (needed when `cfg.ground_weight` > 0); `on_step` as
    `llava.train.loop.train` takes it; `centers` (rows of `features`, patches, 2) each patch's object centre, NaN
    where none covers it (`llava.train.clip.object_centers`; needed when `cfg.place_weight` > 0)."""
    missing = {e.image for e in examples if e.image is not None and e.image not in feature_index}
    if missing:
        raise KeyError(f"{len(missing)} pictures have no cached features, e.g. {sorted(missing)[:3]}")
    if cfg.ground_weight and (ground is None or len(ground) != len(examples)):
        raise ValueError(f"{cfg.name}: ground_weight={cfg.ground_weight} needs grounding targets for every example")
    if cfg.ground_weight:
        check_heads(model, ground)
    keep = layers_needed(ground) if cfg.ground_weight else 1
    heads = None
    if cfg.place_weight:
        if centers is None or len(centers) != len(features):
            raise ValueError(f"{cfg.name}: place_weight={cfg.place_weight} needs the centres of every picture")
        text = model.config.text_config
        read = cfg.place_layers or text.num_hidden_layers
        if not 0 < read <= text.num_hidden_layers:
            raise ValueError(f"{cfg.name}: place_layers={cfg.place_layers}, the LM has {text.num_hidden_layers}")
        heads = torch.nn.ModuleList(torch.nn.Linear(text.hidden_size, 2) for _ in range(read))
        keep = max(keep, read + 1)  # the embeddings, then the read layers' outputs
    counters, counted = None, None
    if cfg.count_weight:
        if not (cfg.ground_weight and cfg.ground_count):
            raise ValueError(f"{cfg.name}: count_weight={cfg.count_weight} needs the counting heads (ground_count)")
        text = model.config.text_config
        if not 0 < cfg.count_layers <= text.num_hidden_layers:
            raise ValueError(f"{cfg.name}: count_layers={cfg.count_layers}, the LM has {text.num_hidden_layers}")
        counted = [count_targets(row) for row in ground]
        counters = torch.nn.ModuleList(
            torch.nn.Linear(text.hidden_size, MAX_OBJECTS + 1) for _ in range(cfg.count_layers)
        )
        keep = max(keep, cfg.count_layers + 1)
    set_trainable(model, cfg.train_lm)
    model.train()
    batches = length_grouped_batches(examples, cfg.batch_size, random.Random(cfg.seed))
    pad = model.config.text_config.pad_token_id

    def loss_fn(step: int) -> torch.Tensor:
        chosen = next(batches)
        batch = collate([examples[i] for i in chosen], pad)
        rows = [feature_index[name] for name in batch.images]
        image_features = features[rows] if rows else None
        hidden, layer_inputs = llava_logits(
            model, batch.input_ids, batch.attention_mask, image_features, keep, batch.segments, batch.position_ids
        )
        loss = next_token_loss(model, hidden, batch.labels)
        if cfg.ground_weight:
            targets = [ground[i] for i in chosen]
            loss = loss + cfg.ground_weight * grounding_loss(
                model, layer_inputs, batch.attention_mask, targets, batch.segments, batch.position_ids
            )
        if heads is not None:
            slots = batch.input_ids == model.config.image_token_id
            outputs = layer_inputs[1 : len(heads) + 1]
            loss = loss + cfg.place_weight * place_loss(heads, outputs, slots, centers[rows])
        if counters is not None:
            outputs = layer_inputs[1 : len(counters) + 1]
            loss = loss + cfg.count_weight * count_readout_loss(counters, outputs, [counted[i] for i in chosen])
        return loss

    params = list(model.parameters())
    params += [p for extra in (heads, counters) if extra is not None for p in extra.parameters()]
    with training_attention(model), compiled_layers(model.model.language_model.layers, cfg.optim.compile):
        history = train(params, loss_fn, cfg.optim, cfg.name, evaluate, eval_every, progress, on_step)
    model.eval()
    return history


def place_loss(
    heads: Sequence[torch.nn.Module], layer_outputs: Sequence[torch.Tensor], slots: torch.Tensor, centers: torch.Tensor
) -> torch.Tensor:
    """Mean over layers of `center_loss`: `layer_outputs[l]` (B, T, H) read out by `heads[l]` at the image
    tokens (`slots`, (B, T) boolean, one picture's tokens after another's) against `centers` (pictures, P, 2)."""
    n, patches = centers.shape[:2]
    losses = [
        center_loss(head, h[slots].view(n, patches, -1), centers) for head, h in zip(heads, layer_outputs, strict=True)
    ]
    return torch.stack(losses).mean()


def count_targets(targets: Sequence[Target]) -> list[tuple[int, int, int]]:
    """(position, layer of the counting head, how many objects it counts) of the counting looks of "how many"
    questions of a kind (`asked`)."""
    return [
        (t.position, t.layer, counted_number(t)) for t in targets if t.asked and (t.layer, t.head) in COUNTING_HEADS
    ]


def count_readout_loss(
    heads: Sequence[torch.nn.Module], layer_outputs: Sequence[torch.Tensor], counted: Sequence[Sequence[tuple]]
) -> torch.Tensor:
    """Cross-entropy of `heads[l]`'s read-out of `layer_outputs[l]` (B, T, H) against the number counted at each
    of `counted[b]`'s (position, counting head's layer, number), on the layers from that head's on; the mean
    over every (layer, position) read. Zero when the batch counts nothing."""
    logits, numbers = [], []
    for layer, (head, h) in enumerate(zip(heads, layer_outputs, strict=True)):
        at = [(b, pos, n) for b, row in enumerate(counted) for pos, from_layer, n in row if from_layer <= layer]
        if at:
            rows, positions, n = (torch.tensor(v, device=h.device) for v in zip(*at, strict=True))
            logits.append(head(h[rows, positions]).float())
            numbers.append(n)
    if not logits:
        return layer_outputs[0].new_zeros(())
    return torch.nn.functional.cross_entropy(torch.cat(logits), torch.cat(numbers))


def pretrain_lm(
    lm: LlamaForCausalLM, examples: Sequence[Example], batch_size: int, optim: OptimConfig, seed: int = 0,
    progress: bool = True, on_step: Callable[[], None] | None = None,
) -> History:  # fmt: skip
    """Plain next-token pre-training of the language model on the text corpus (`on_step`: as `train` takes it)."""
    lm.train()
    batches = length_grouped_batches(examples, batch_size, random.Random(seed))
    pad = lm.config.pad_token_id

    def loss_fn(step: int) -> torch.Tensor:
        batch = collate([examples[i] for i in next(batches)], pad)
        hidden = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state
        targets = batch.labels[:, 1:]
        keep = targets != IGNORE
        logits = lm.lm_head(hidden[:, :-1][keep])
        return torch.nn.functional.cross_entropy(logits.float(), targets[keep])

    with training_attention(lm), compiled_layers(lm.model.layers, optim.compile):
        history = train(lm.parameters(), loss_fn, optim, "lm", progress=progress, on_step=on_step)
    lm.eval()
    return history
