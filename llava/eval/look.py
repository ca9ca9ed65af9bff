"""Where a chat model looks when it answers about one object: attention on that object's patches.

Two look-ups are probed on held-out pictures, each with a teacher-forced answer head:

- `shape`-keyed: "What color is the triangle?" -> "The triangle is" + colour. The model has to find the
  triangle's patches from the word `triangle`.
- `color`-keyed: "What shape is the red object?" -> "The red object is a" + shape.

For every layer and head the probe reports the attention share, averaged over pictures, that goes from the
key word in the question (and from the answer head's last token) to all image tokens and to the patches the
object's box touches, plus how often the next token names the right colour or shape. A head that finds
the object puts most of its image attention on it; the original LLaVA demo has no such check.

`count_look` probes the whole count ("How many shapes are there in the image?" -> "There are" + number) and the
counting head the chat stage trains (`llava.train.ground`, `count`) at the question's "shapes": its first token's
share says how many objects it sees (the rest of its look over the first token's, the "implied count"), and each
object should get as much as the first token, whatever its size.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import torch

from llava.conversation import conv_templates
from llava.data.world import MAX_OBJECTS, number_word, sample_scene
from llava.eval.chat import draw
from llava.model.loader import LoadedModel
from llava.model.tiny import COLORS, SHAPES
from llava.train.clip import box_cover
from llava.train.ground import COUNT_HEAD

LOOKUPS = {  # keyed by: (question, answer head, what is read off the object)
    "shape": ("What color is the {}?", "The {} is", "color"),
    "color": ("What shape is the {} object?", "The {} object is a", "shape"),
}


@dataclass(slots=True)
class Look:
    key: str  # "shape" or "color": what the question names the object by
    pictures: int  # pictures that had an object with a unique key value
    next_token_right: float  # share where the head's next token is the right colour / shape
    from_word_image: torch.Tensor  # (layers, heads) attention share from the question's key word to image tokens
    from_word_object: torch.Tensor  # ... to the object's patches
    from_answer_image: torch.Tensor  # (layers, heads) from the answer head's last token
    from_answer_object: torch.Tensor

    def best(self) -> tuple[int, int, float, float]:
        """(layer, head, object share, image share) of the head that puts the most on the object, from the
        key word or from the answer, whichever is higher."""
        word, answer = self.from_word_object, self.from_answer_object
        grid = torch.maximum(word, answer)
        layer, head = divmod(int(grid.argmax()), grid.shape[1])
        image = self.from_word_image if word[layer, head] >= answer[layer, head] else self.from_answer_image
        return layer, head, float(grid[layer, head]), float(image[layer, head])

    def to_json(self) -> dict:
        layer, head, on_object, on_image = self.best()
        return {
            "key": self.key,
            "pictures": self.pictures,
            "next_token_right": self.next_token_right,
            "best_head": {"layer": layer, "head": head, "object": on_object, "image": on_image},
            "from_word_object": self.from_word_object.tolist(),
            "from_word_image": self.from_word_image.tolist(),
            "from_answer_object": self.from_answer_object.tolist(),
            "from_answer_image": self.from_answer_image.tolist(),
        }


def _word_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """The first token of each word as it follows a space (what the answer's next token is)."""
    return [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]


def _first_end_after(ids: torch.Tensor, word_ids: list[int], start: int) -> int:
    """The position of the last token of the first occurrence of `word_ids` in `ids` (1-D) after `start`."""
    n = len(word_ids)
    for begin in range(start, len(ids) - n + 1):
        if ids[begin : begin + n].tolist() == word_ids:
            return begin + n - 1
    raise ValueError(f"token sequence {word_ids} not in the prompt")


def _forced(loaded: LoadedModel, image, question: str, answer_head: str) -> tuple:
    """The model's output (with attentions) on `question` about `image` and the start of an answer; the prompt's
    ids (1-D, on the CPU) and the positions of its image tokens."""
    conv = conv_templates[loaded.template or "llava_v0"].copy()
    conv.append_message(conv.roles[0], (question, image, "Default"))
    conv.append_message(conv.roles[1], None)
    prompt = f"{conv.get_prompt()} {answer_head}"
    inputs = loaded.processor(images=[image], text=prompt, return_tensors="pt").to(loaded.model.device)
    out = loaded.model(**inputs, output_attentions=True)
    ids = inputs["input_ids"][0].cpu()
    return out, ids, (ids == loaded.model.config.image_token_id).nonzero().flatten()


@torch.no_grad()
def look(loaded: LoadedModel, n_pictures: int, key: str, renderer: str = "primary", seed: int = 77) -> Look:
    """Probe the `key`-keyed look-up (see the module docstring) on `n_pictures` held-out pictures."""
    if key not in LOOKUPS:
        raise ValueError(f"unknown look-up {key!r}; use one of {sorted(LOOKUPS)}")
    question, head, reads = LOOKUPS[key]
    model, processor = loaded.model, loaded.processor
    tokenizer = processor.tokenizer
    candidates = COLORS if reads == "color" else SHAPES
    candidate_ids = _word_ids(tokenizer, candidates)
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa returns no attention weights
    rng = random.Random(seed)
    sums = torch.zeros(4, model.config.text_config.num_hidden_layers, model.config.text_config.num_attention_heads)
    right = pictures = 0
    try:
        for _ in range(n_pictures):
            scene = sample_scene(rng)
            image = draw(scene, renderer, rng)
            values = [getattr(o, key) for o in scene.objects]
            unique = [v for v in dict.fromkeys(values) if values.count(v) == 1]
            if not unique:
                continue
            value = rng.choice(unique)
            obj = next(o for o in scene.objects if getattr(o, key) == value)
            out, ids, image_pos = _forced(loaded, image, question.format(value), head.format(value))
            word = tokenizer(" " + value, add_special_tokens=False)["input_ids"]
            word_pos = _first_end_after(ids, word, int(image_pos[-1]) + 1)  # the question's key word
            on_object = (box_cover(obj.box, grid) > 0).float()
            attention = torch.stack([a[0].float().cpu() for a in out.attentions])  # (layers, heads, from, to)
            for row, position in ((0, word_pos), (2, -1)):
                to_image = attention[:, :, position, image_pos]  # (layers, heads, patches)
                sums[row] += to_image.sum(-1)
                sums[row + 1] += (to_image * on_object).sum(-1)
            logits = out.logits[0, -1, candidate_ids]
            right += candidates[int(logits.argmax())] == getattr(obj, reads)
            pictures += 1
    finally:
        model.set_attn_implementation(previous)
    mean = sums / max(pictures, 1)
    return Look(key, pictures, right / max(pictures, 1), mean[0], mean[1], mean[2], mean[3])


def markdown(looks: list[Look]) -> str:
    """One line per look-up: next-token accuracy and the head that finds the object best."""
    lines = [
        "| look-up | pictures | next token right (%) | best head (layer.head) | on the object (%) | on the image (%) |",
        "|---|---|---|---|---|---|",
    ]
    for lk in looks:
        layer, head, on_object, on_image = lk.best()
        lines.append(
            f"| {lk.key}-keyed ({LOOKUPS[lk.key][0].format('…')}) | {lk.pictures} | {100 * lk.next_token_right:.1f} "
            f"| {layer}.{head} | {100 * on_object:.0f} | {100 * on_image:.0f} |"
        )
    return "\n".join(lines)


COUNT_QUESTION = "How many shapes are there in the image?"


@dataclass(slots=True)
class CountLook:
    """The whole count, teacher-forced, and the counting head at the question's "shapes" (`count_look`)."""

    head: tuple[int, int]  # (layer, head) probed
    # by the number of objects: pictures, next_token_right (share), implied (mean count the head's look says), and
    # implied_sd (its standard deviation over those pictures)
    by_objects: dict[int, dict[str, float]]
    # by the patches an object covers at least a quarter of ("0" ... "5", "6+"): objects, and share (mean, sd) of
    # the head's look on those patches over its look at the first token (1 is the target)
    by_patches: dict[str, dict[str, float]]

    def to_json(self) -> dict:
        return {
            "head": list(self.head),
            "by_objects": {str(k): v for k, v in self.by_objects.items()},
            "by_patches": self.by_patches,
        }


def has_head(model, head: tuple[int, int]) -> bool:
    """Whether the language model has that (layer, head)."""
    text = model.config.text_config
    return head[0] < text.num_hidden_layers and head[1] < text.num_attention_heads


def _mean_sd(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False))


@torch.no_grad()
def count_look(
    loaded: LoadedModel, n_pictures: int, renderer: str = "primary", seed: int = 77, head: tuple[int, int] = COUNT_HEAD
) -> CountLook:
    """Probe the whole count and the counting `head` (layer, head) on `n_pictures` held-out pictures."""
    model, processor = loaded.model, loaded.processor
    text = model.config.text_config
    if not has_head(model, head):
        raise ValueError(
            f"the model has no head {head} ({text.num_hidden_layers} layers of {text.num_attention_heads})"
        )
    tokenizer = processor.tokenizer
    numbers = [number_word(k) for k in range(1, MAX_OBJECTS + 1)]
    number_ids = _word_ids(tokenizer, tuple(numbers))
    shapes = tokenizer(" shapes", add_special_tokens=False)["input_ids"]
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    rng = random.Random(seed)
    right, implied = defaultdict(list), defaultdict(list)
    shares = defaultdict(list)
    try:
        for _ in range(n_pictures):
            scene = sample_scene(rng)
            image = draw(scene, renderer, rng)
            k = len(scene.objects)
            out, ids, image_pos = _forced(loaded, image, COUNT_QUESTION, f"There {'is' if k == 1 else 'are'}")
            word_pos = _first_end_after(ids, shapes, int(image_pos[-1]) + 1)
            look = out.attentions[head[0]][0, head[1], word_pos].float().cpu()
            first, on_image = float(look[0]), look[image_pos]
            implied[k].append(float(on_image.sum()) / max(first, 1e-9))
            right[k].append(int(out.logits[0, -1, number_ids].argmax()) == k - 1)
            for obj in scene.objects:
                covered = box_cover(obj.box, grid) * grid * grid >= 0.25
                n = int(covered.sum())
                shares[str(n) if n < 6 else "6+"].append(float(on_image[covered].sum()) / max(first, 1e-9))
    finally:
        model.set_attn_implementation(previous)
    by_objects = {}
    for k in sorted(right):
        mean, sd = _mean_sd(implied[k])
        by_objects[k] = {
            "pictures": len(right[k]),
            "next_token_right": sum(right[k]) / len(right[k]),
            "implied": mean,
            "implied_sd": sd,
        }
    by_patches = {}
    for key in sorted(shares, key=lambda s: int(s.rstrip("+"))):
        mean, sd = _mean_sd(shares[key])
        by_patches[key] = {"objects": len(shares[key]), "share": mean, "share_sd": sd}
    return CountLook(head, by_objects, by_patches)


def count_markdown(result: CountLook) -> str:
    """The count probe's two tables: by the number of objects, and by how many patches an object covers."""
    layer, head = result.head
    lines = [
        f"| objects | pictures | next number right (%) | head {layer}.{head}: implied count | its sd |",
        "|---|---|---|---|---|",
    ]
    for k, row in result.by_objects.items():
        lines.append(
            f"| {k} | {row['pictures']} | {100 * row['next_token_right']:.1f} | {row['implied']:.2f} "
            f"| {row['implied_sd']:.2f} |"
        )
    lines += [
        "",
        f"| patches an object covers (a quarter or more) | objects | head {layer}.{head}: its look / the first "
        "token's (target 1) | sd |",
        "|---|---|---|---|",
    ]
    for key, row in result.by_patches.items():
        lines.append(f"| {key} | {row['objects']} | {row['share']:.2f} | {row['share_sd']:.2f} |")
    return "\n".join(lines)
