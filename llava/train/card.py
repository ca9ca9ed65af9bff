"""Model cards: README.md in each checkpoint folder, written from the pipeline's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llava.data.sqa_world import FACT_SHARE
from llava.eval.questions import KINDS, TARGET_KINDS

STAGE_ROWS = (
    ("corpus+tokenizer", "text corpus + byte-level BPE", "—"),
    ("clip", "CLIP ViT + text tower, contrastive: captions, object regions, patches", "vision tower + text tower"),
    ("lm", "Llama language model, next-token on the text corpus", "language model"),
    ("stage1", "feature alignment on picture/caption pairs", "projector only"),
    ("stage2-chat", "instruction tuning: conversation, detail, complex reasoning", "projector + language model"),
    ("stage2-sqa", "ScienceQA-format tuning from stage 1 (QCM -> LEA)", "projector + language model"),
)
RENDERER_NAMES = {"primary": "own renderer (PIL, hard edges)", "alt": "second renderer (anti-aliased, 96-512 px)"}


def _pct(v: Any) -> str:
    return "—" if v is None or v != v else f"{100 * v:.1f}"


def chat_table(evals: dict[str, dict]) -> str:
    head = "| pictures | " + " | ".join(KINDS[:-1]) + " | describe: objects named | describe: extra mentions |"
    lines = [head, "|" + "---|" * (len(KINDS) + 2)]
    for renderer, r in evals.items():
        acc = r["accuracy"]
        cells = [_pct(acc.get(k)) for k in KINDS[:-1]]
        lines.append(
            f"| {RENDERER_NAMES.get(renderer, renderer)} | " + " | ".join(cells)
            + f" | {_pct(r['description_objects_named'])} | {r['description_extra_mentions']} |"
        )  # fmt: skip
    n = next(iter(evals.values()))["questions"] if evals else {}
    lines.append("")
    lines.append("Questions per kind and renderer: " + ", ".join(f"{k} {v}" for k, v in n.items()) + ".")
    return "\n".join(lines)


def by_objects_table(evals: dict[str, dict]) -> str:
    """Accuracy per kind against the number of objects in the picture, one row per kind and renderer: where a
    recipe gains or loses (four-object scenes are where the models miss)."""
    counts = sorted({int(n) for r in evals.values() for v in r.get("accuracy_by_objects", {}).values() for n in v})
    lines = ["| kind | pictures | " + " | ".join(f"{n} object{'s' * (n > 1)}" for n in counts) + " |"]
    lines.append("|---|---|" + "---|" * len(counts))
    for kind in KINDS:
        for renderer, r in evals.items():
            acc = {int(n): v for n, v in r.get("accuracy_by_objects", {}).get(kind, {}).items()}
            if acc:
                name = RENDERER_NAMES.get(renderer, renderer).split(" (")[0]
                label = "describe (every object named)" if kind == "describe" else kind
                lines.append(f"| {label} | {name} | " + " | ".join(_pct(acc.get(n)) for n in counts) + " |")
    return "\n".join(lines)


def where_bands_table(evals: dict[str, dict], axis: str) -> str:
    """`where` answers on one axis ("row" or "column"): per renderer and band the object is in, how many answers
    named each band (or no place at all). A model that cannot see where things are piles up in one column."""
    rows = [(renderer, r["where_bands"][axis]) for renderer, r in evals.items() if axis in r.get("where_bands", {})]
    if not rows:
        return ""
    answered = list(next(iter(rows[0][1].values())))
    head = " | ".join(f"answered {a}" if a != "none" else "no place" for a in answered)
    lines = [f"| pictures | object's {axis} | {head} |", "|---|---|" + "---|" * len(answered)]
    for renderer, table in rows:
        name = RENDERER_NAMES.get(renderer, renderer).split(" (")[0]
        for band, said in table.items():
            lines.append(f"| {name} | {band} | " + " | ".join(str(said[a]) for a in answered) + " |")
    return "\n".join(lines)


def count_answers_table(evals: dict[str, dict]) -> str:
    """Answers to "How many shapes are there?" per renderer, number of objects and of different colours among
    them: how many were right, said too few or too many, or said no number. A model that counts colours instead
    of objects says too few where a colour comes twice."""
    lines = [
        "| pictures | objects | colours | questions | right (%) | too few | too many | no number |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for renderer, r in evals.items():
        name = RENDERER_NAMES.get(renderer, renderer).split(" (")[0]
        for objects, by_colors in r.get("count_answers", {}).items():
            for colors, said in by_colors.items():
                n, told = int(objects), {k: v for k, v in said.items() if k != "none"}
                asked = sum(said.values())
                right = 100 * told.get(str(n), 0) / asked
                fewer = sum(v for k, v in told.items() if int(k) < n)
                more = sum(v for k, v in told.items() if int(k) > n)
                lines.append(
                    f"| {name} | {n} | {colors} | {asked} | {right:.1f} | {fewer} | {more} | {said.get('none', 0)} |"
                )
    return "\n".join(lines) if len(lines) > 2 else ""


def missed_targets(evals: dict[str, dict], is_chat: bool) -> list[str]:
    """The targets these figures miss, as `kind on renderer (value)`; empty when every one holds."""
    out = []
    for renderer, r in evals.items():
        where = RENDERER_NAMES.get(renderer, renderer).split(" (")[0]
        if is_chat:
            checks = [(k, r["accuracy"].get(k), 0.95) for k in TARGET_KINDS]
            checks.append(("objects named", r["description_objects_named"], 0.90))
        else:
            checks = [("accuracy", r["accuracy"]["all/Avg"], 0.95), ("format kept", r["format_kept"], 1.0)]
        out += [f"{k} on the {where} ({_pct(v)})" for k, v, floor in checks if v is not None and v < floor]
    return out


def sqa_table(evals: dict[str, dict]) -> str:
    first = next(iter(evals.values()))
    cols = list(first["accuracy"])
    names = [c.split("/", 1)[1] for c in cols]
    lines = ["| pictures | " + " | ".join(names) + " | format kept |", "|" + "---|" * (len(cols) + 2)]
    for renderer, r in evals.items():
        cells = [_pct(r["accuracy"].get(c)) for c in cols]
        lines.append(
            f"| {RENDERER_NAMES.get(renderer, renderer)} | " + " | ".join(cells) + f" | {_pct(r['format_kept'])} |"
        )
    lines.append("| problems | " + " | ".join(str(first["counts"][c]) for c in cols) + " | |")
    if first.get("explained"):
        lines.append("")
        for renderer, r in evals.items():
            lines.append(
                f"- {RENDERER_NAMES.get(renderer, renderer)}: of {r['explained']} answers whose last sentence names "
                f"one option, the option is right {_pct(r['explanation_right'])}% of the time and the letter is "
                f"that option's {_pct(r['letter_matches_explanation'])}% (reasoning vs reading the letter off)."
            )
    return "\n".join(lines)


def trained_both(report) -> bool:
    """Whether the run that wrote `report` made both fine-tunes (not one with --only)."""
    return {"stage2-chat", "stage2-sqa"} <= set(report.timings)


def stage_table(report, final_stage: str) -> str:
    cfg = report.config
    steps = {
        "clip": (cfg["clip"]["optim"], cfg["clip"]["batch_size"]),
        "lm": (cfg["lm_optim"], cfg["lm_batch"]),
        "stage1": (cfg["stage1"]["optim"], cfg["stage1"]["batch_size"]),
        "stage2-chat": (cfg["stage2"]["optim"], cfg["stage2"]["batch_size"]),
        "stage2-sqa": (cfg["sqa"]["optim"], cfg["sqa"]["batch_size"]),
    }
    lines = ["| stage | what | trained | steps x batch | peak lr | minutes |", "|---|---|---|---|---|---|"]
    for name, what, trained in STAGE_ROWS:
        if name.startswith("stage2") and name != final_stage:
            continue
        optim, batch = steps.get(name, ({}, None))
        size = f"{optim['steps']} x {batch}" if batch else "—"
        lr = f"{optim['lr']:g}" if optim else "—"
        minutes = report.timings.get(name)
        lines.append(f"| {name} | {what} | {trained} | {size} | {lr} | {minutes / 60:.1f} |" if minutes else
                     f"| {name} | {what} | {trained} | {size} | {lr} | — |")  # fmt: skip
    if "total" in report.timings:
        made = "both checkpoints" if trained_both(report) else "this checkpoint alone"
        # a run made with --no-eval has none; fine-tunes trained side by side are scored as each ends ("eval-chat")
        evaluated = any(k == "eval" or k.startswith("eval-") for k in report.timings)
        scored = "evaluation included" if evaluated else "no evaluation"
        lines.append(f"| **whole pipeline** ({made}, {scored}) | | | | | {report.timings['total'] / 60:.1f} |")
    pairs = [" and ".join(pair) for pair in cfg.get("side_by_side", []) if final_stage in pair or "clip" in pair]
    if pairs:
        lines += ["", f"Trained side by side, each on half the threads (their minutes overlap; the whole pipeline's "
                      f"are wall time): {'; '.join(pairs)}."]  # fmt: skip
    return "\n".join(lines)


GROUNDING_OPTIONS = (  # StageConfig flag -> what it adds, for the card
    ("ground_count", "two more heads count the objects a word names by how much they look away from the first token"),
    ("ground_count_center", "the counting heads look at each object's centre, not over its whole box"),
    ("place_weight", "every object token reads out its object's centre from {place_layers} (a head per layer, dropped "
     "after training)"),
    ("count_weight", "every token a counting head looks from reads out the number it counts from {count_layers} (a "
     "classifier per layer, dropped after training)"),
    ("ground_absent", "the token after a phrase that names nothing in the picture looks at the first token"),
    ("ground_link", '"object is a" after a colour word looks at that colour\'s objects'),
    ("ground_described", "in a problem whose text describes a picture, the same look-ups find the objects' phrases"),
    ("ground_extreme", '"Which object is highest?": the question\'s word looks at that object (layer 0), the answer\'s'
     " words that choose it look back at the word (layer 1) and then at the object (layer 2)"),
)  # fmt: skip


def grounding_options(stage: dict) -> str:
    """The card's sentence on the look-ups a stage's config (`StageConfig` as JSON) switched on; "" if none."""
    layers = stage.get("place_layers")
    where = f"the first {layers} language-model layers" if layers else "every language-model layer"
    where = "the first language-model layer" if layers == 1 else where
    counts = stage.get("count_layers", 0)
    through = f"the first {counts} language-model layers" if counts != 1 else "the first language-model layer"
    extras = [
        text.format(place_layers=where, count_layers=through) for key, text in GROUNDING_OPTIONS if stage.get(key)
    ]
    return " Also: " + "; ".join(extras) + "." if extras else ""


def question_weights(weights: dict[str, float] | None, fact_share: float = FACT_SHARE) -> str:
    """'; extreme questions 4x as often' for {"extreme": 4.0}: each kind of question goes by its maker's name; and
    the share of problems with no context where it is not the held-out problems' `FACT_SHARE`."""
    kinds = [f"{k.replace('_', ' ')} questions {w:g}x as often" for k, w in (weights or {}).items() if w != 1]
    if fact_share != FACT_SHARE:
        kinds.append(f"{fact_share:.0%} of them with no context (held-out problems: {FACT_SHARE:.0%})")
    return "; " + ", ".join(kinds) if kinds else ""


def precision_line(cfg: dict) -> str:
    """How the run's stages computed, from its report's config (the fine-tunes' settings, and CLIP's where apart)."""
    optim = cfg["stage2"]["optim"]
    precision = "bfloat16 autocast" if optim["bf16"] else "float32 (the CPU has no native bfloat16)"
    if optim["bf16"] and "compile" in optim:  # reports since b4c60e1, whose stages attend in float32
        precision += ", attention in float32"
    if optim.get("compile"):
        precision += ", the transformer layers compiled (torch.compile)"
    if optim["bf16"] and cfg.get("clip", {}).get("optim", {}).get("bf16") is False:  # ClipConfig's default
        precision += "; CLIP pre-trained in float32"
    return precision


def host_line(cfg: dict) -> str:
    """The host's speed at the start and the end of the run (`pipeline.host_speed`); empty for reports before it."""
    host = cfg.get("host_matmul")
    if not host:
        return ""
    return (
        f" The host's 1024x1024 {host['dtype']} matmul on one thread: {host['gflops_start']:g} GFLOP/s at the start"
        f" of the run, {host['gflops_end']:g} at the end (a shared machine's speed drifts: minutes compare at like"
        " speeds)."
    )


def write_card(folder: Path, name: str, report, smoke: bool = False) -> Path:
    cfg, sizes = report.config, report.config["sizes"]
    is_chat = name.endswith("chat")
    stage = "stage2-chat" if is_chat else "stage2-sqa"
    weights = folder / "model.safetensors"
    mb = weights.stat().st_size / 1e6 if weights.exists() else float("nan")
    clip_checks = report.histories["clip"].evals
    grounded = report.data.get(f"{'chat' if is_chat else 'sqa'}_grounded_positions", 0)
    weight = cfg["stage2" if is_chat else "sqa"]["ground_weight"]
    ground_line = (
        f" Plus the grounding loss (weight {weight}) on {grounded:,} token positions: in LM layer 0"
        " one head learns to attend, from each shape word, to that shape's patches (another from each colour word),"
        " and in layer 1 a head does the same from the token after a shape word, where the answer about it begins,"
        " and from the words of a place phrase; another, from the article, size and colour of an object phrase,"
        " attends to the object the phrase names."
        if grounded
        else ""
    )
    if grounded:
        ground_line += grounding_options(cfg["stage2" if is_chat else "sqa"])
    if grounded and not is_chat:
        ground_line += (
            " For the letter, in layer 0 each option's tokens attend to its letter and to its words so far; where the"
            " letter is predicted, a layer-1 head attends to where the answer named the correct option and a layer-2"
            " head to that option's last word in the list."
        )
    if is_chat:
        rows, records = report.data.get("chat_rows", 0), report.data.get("chat_records", 0)
    else:
        rows, records = (
            report.data.get("sqa_rows", 0),
            sum(report.data.get(k, 0) for k in ("sqa_problems", "sqa_lookups")),
        )
    packed_line = (
        f" Each picture's records are packed into one row ({rows:,} rows): the system prompt and the image tokens"
        " once, then each record as a segment that attends to them and to itself at the positions it has alone, so"
        " every token is trained as in its own record."
        if 0 < rows < records
        else ""
    )
    stored = cfg.get("stored_dtype", "float32")
    alone = not trained_both(report)
    only = f" --only {'chat' if is_chat else 'sqa'}" if alone else ""
    made_by = (
        "`python -m llava.train.pipeline --out FIRST --keep-stage1`, then "
        f"`python -m llava.train.pipeline --out RUN --from-stage1 FIRST/stage1{only}`"
        if cfg.get("stage1_from")
        else f"`python -m llava.train.pipeline --out RUN{only}`"
    )
    made_tail = (
        f", then `python -m llava.train.export --src RUN --out checkpoints/{only}`" if stored != "float32" else ""
    )
    precision = precision_line(cfg)
    summary = cfg["clip"].get("summary_weight", 0)
    summary_line = (
        f" Every layer -2 patch also reads out, through a linear head dropped afterwards (weight {summary}), the scene's"
        " object count, the count of each colour and each shape, and which colour-shape pairs are present."
        if summary
        else ""
    )
    center = cfg["clip"].get("center_weight", 0)
    if center:
        summary_line += (
            f" Every patch its object covers also reads out that object's centre (x, y), through a linear head dropped"
            f" afterwards (weight {center}), so the image tokens say where their object is (place_r2: how well a"
            " linear probe reads the centre from them)."
        )
    clip_line = ", ".join(f"{k} {100 * v[-1][1]:.0f}%" for k, v in sorted(clip_checks.items())) or "not measured"
    evals = report.evals.get(name)
    if evals:
        table = chat_table(evals) if is_chat else sqa_table(evals)
        missed = missed_targets(evals, is_chat)
        table += "\n\n" + (
            "**Misses the targets:** " + "; ".join(missed) + "." if missed else "**Every target holds.**"
        )
    else:
        table = "_Not evaluated in this run (`--no-eval`)._"
    target = (
        "Targets: >= 95% on " + ", ".join(TARGET_KINDS) + "; descriptions name >= 90% of the objects with the right "
        "colour and shape; on both renderers."
        if is_chat
        else "Targets: >= 95% accuracy with the `The answer is X.` format kept on every item, on both renderers."
    )
    use_prompt = (
        "###Human: <image>\\nWhat color is the circle?###Assistant:"
        if is_chat
        else "###Human: <image>\\nQuestion: Which shape is red?\\nContext: N/A\\nOptions: (A) circle (B) square "
        "(C) triangle###Assistant:"
    )
    text = f"""# {name}{" (SMOKE RUN: tiny sizes, a few steps, untrained)" if smoke else ""}

A mini LLaVA trained from scratch on CPU with the method of *Visual Instruction Tuning* (Liu et al., 2023):
a CLIP ViT vision tower, a two-layer projector and a Llama language model, trained in two stages on
machine-generated instruction data about a synthetic world of flat coloured shapes (circle, square, triangle;
red, green, blue, yellow, purple, orange; small and large; 1 to 4 per picture). {"It chats about such pictures." if is_chat else "It answers ScienceQA-style multiple-choice questions about such pictures (and text-only ones), reasoning first, then `The answer is X.`"}

It knows nothing outside that world. Made by {made_by} (seed {cfg["seed"]}, code at {cfg.get("code", "an unrecorded commit")}){made_tail}.

## Use

Plain `transformers` (`AutoProcessor` + `LlavaForConditionalGeneration`) with the `llava_v0` template
(`config.json` names it under `conv_template`); generation stops at `###`:

```python
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration
processor = AutoProcessor.from_pretrained("checkpoints/{name}")
model = LlavaForConditionalGeneration.from_pretrained("checkpoints/{name}", dtype=torch.float32)
system = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions."
prompt = system + "{use_prompt}"
inputs = processor(images=image, text=prompt, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(out[0, inputs.input_ids.shape[1]:]).split("###")[0])
```

or serve it: `python -m llava.cli --model-path checkpoints/{name} --image-file picture.png`.

## Evaluation (held-out pictures, greedy decoding, through `llava.generation`)

{target}

{table}

Reproduce: `{"python -m llava.eval chat --model checkpoints/" + name + " --pictures " + str(cfg["eval_pictures"]) if is_chat else "python -m llava.eval sqa --model checkpoints/" + name + " --problems " + str(cfg["eval_problems"])}`
(both renderers by default; seeds fixed, the pictures are new scenes never used in training).

## Model

| part | sizes | parameters |
|---|---|---|
| vision tower (CLIP ViT) | {sizes["image_size"]} px, patch {sizes["patch_size"]} -> {(sizes["image_size"] // sizes["patch_size"]) ** 2} image tokens, width {sizes["vision_hidden"]}, {sizes["vision_layers"]} layers; features from layer -2 | {report.params.get("vision_tower", 0):,} |
| projector | two-layer MLP (GELU) | {report.params.get("projector", 0):,} |
| language model (Llama) | width {sizes["text_hidden"]}, {sizes["text_layers"]} layers, MLP {sizes["text_intermediate"]}, vocabulary {sizes["vocab_size"]}, context {sizes["max_position_embeddings"]} | {report.params.get("language_model", 0):,} |

Weights: {mb:.1f} MB ({stored} safetensors{", exported from the float32 run by `python -m llava.train.export`; the figures above are of these weights" if stored != "float32" else ""}).

## Data and stages

- **Text corpus** ({report.data.get("corpus_texts", 0):,} texts): captions, the teacher's chats and ScienceQA-style problems
  about symbolic scenes that are never drawn (each chat reads its scene's caption where the picture will be), and
  option look-ups; trains the BPE tokenizer (`<image>` is a special token) and the LM.
- **CLIP** ({report.data.get("clip_pairs", 0):,} picture/caption pairs, drawn at random resolutions with shade jitter and
  tinted backgrounds, then resized by the processor). The caption names every object's size, colour, shape and
  position (global loss, picture against caption); each object's patch tokens, pooled over its box, are also
  matched against the 36 phrases `size colour shape` (region loss), and so is every layer -2 patch its object's box
  covers at least a quarter of (patch loss: the layer LLaVA reads).{summary_line} Held-out checks at the end (true caption
  over a one-change negative, by kind; region zero-shot): {clip_line}.
- **Stage 1** ({report.data.get("stage1_pairs", 0):,} pairs): `Describe the image concisely.`-style instruction + caption;
  vision tower and LM frozen, the projector learns.
- **Stage 2** — {"chat: " + format(report.data.get("chat_records", 0), ",") + " LLaVA-Instruct records (" + format(report.data.get("chat_turns", 0), ",") + " question/answer turns) from the rule-based teacher, which reads only captions + boxes: multi-turn conversations (canonical questions and paraphrases), detailed descriptions, complex reasoning (largest, in common, extremes, left of, more than, what if removed)" if is_chat else "ScienceQA: " + format(report.data.get("sqa_problems", 0), ",") + " problems in ScienceQA's `problems.json` schema (picture, text-context and no-context problems" + (f"; up to {cfg['sqa_per_picture']} about each picture" if cfg.get("sqa_per_picture", 1) > 1 else "") + question_weights(cfg.get("sqa_maker_weights"), cfg.get("sqa_fact_share", FACT_SHARE)) + "), asked as `Question/Context/Options` (QCM) and answered as lecture + explanation + `The answer is X.` (LEA); tuned from the stage-1 model"}.
  Loss on the assistant's tokens only (answer and `###`), under the `llava_v0` template.{packed_line}{ground_line}

{stage_table(report, stage)}

Measured on {report.config.get("machine", "2 CPU cores")}, in {precision}.{host_line(report.config)}

![training curves](training_curves.png)

`training_report.json` holds the full configuration, per-step losses and the evaluation results.

## Limitations

Only the synthetic world; positions are the cells of a 3x3 grid; pictures that are not square are
centre-cropped by the processor (use the UI's "Pad" mode to keep the whole picture).
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
