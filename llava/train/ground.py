"""Grounding supervision for stage 2: where the language model looks, in the picture when it reads a word, and
in the options when it names an answer's letter.

The chat model must answer "What color is the triangle?" by finding the triangle's patches and reading their
colour: a look-up keyed by shape. Next-token loss alone never forms it at our size (the image tokens carry
colour-given-shape at 99.7% to a one-head probe, yet the model answers colour at ~58%). So, as an auxiliary loss,
attention heads are taught where to look, each patch weighted by how much of it the objects' boxes cover:

- layer 0, head 0: at every shape word after the picture ("triangle", "triangles"), the objects of that shape;
- layer 0, head 1: at every colour word, the objects of that colour;
- layer 1, head 0 (the second hop): at the token right after a shape word, where the model goes on to say
  something about it ("The triangle is" -> colour), the same objects (only those of the colour named just
  before the shape word, if one is: "the red triangle"), and at the words of a place phrase after an object
  phrase ("a large red circle at the top left": "the", "top"), that object. With `absent=True`, where the
  phrase names nothing in the picture ("a red triangle?" beside a red square and a blue triangle, "a square?"
  with none), it looks at the first token instead of every object of the shape (or nowhere);
- with `count=True`, two heads that count by how much they look away from the first token: layer 0, head 4 at
  every shape and colour word and at "shapes" / "objects" (every object), and layer 1, head 4 at the token
  after one of those nouns (the objects of the colour named before it, if one is: "red shapes", "red
  triangle"), look at the first token and at each matching object equally, 1/(k+1) each for k objects, so the
  first token's share says how many there are, none included ("a red triangle?" beside a red square and a blue
  triangle: all on the first token). An object's share is spread over the patches by how much of each its box
  covers, or, with `count_center`, bilinearly over the (up to) four patches around its box's centre, so a head
  need not know how many patches an object covers to give each the same share. Other heads than those the
  look-ups above use, so these keep their targets. Those of a "how many" question of one colour or shape are
  marked `asked` (`asks_count`): the chat stage's count read-out (`StageConfig.count_weight`) reads the number
  there;
- layer 1, head 2: in an object phrase of an answer ("a large red circle", "the red circle"), at the article,
  size and colour words (each predicts the next word of the phrase: which object a description names next, or
  which one is "furthest to the right", is chosen here), the object the phrase names;
- with `link=True`, layer 1, head 0 also at "object is a" after a colour word ("The blue object is a" ->
  circle), the objects of that colour: the tokens that go on to name their shape;
- with `described=True`, the same look-ups in a problem whose text context describes the picture instead
  ("Context: ... a small red circle at the bottom and a large blue square at the top right."): each object's
  phrase in the description stands in for its patches;
- with `extreme` > 0, "Which object is highest?" in three hops (`extreme_targets`): layer 0, head 5 from the
  question's direction word to the furthest object; layer 1, head 3 from the answer's words that choose the
  object back to that word; layer 2, head 1 from the same words to the object.

The loss is the cross-entropy of each head's attention (the real causal softmax over the whole sequence,
computed from the layer's input) against that distribution.

For these, only the teacher's symbolic scene is used, never the answer, so it is the same kind of
supervision as the bounding boxes the paper gives its text-only teacher.

The ScienceQA form needs one more look-up, in text: "... The circle is green. The answer is" -> B, which
means finding the option the explanation just named and copying its letter. Next-token loss leaves it at
chance (the explanation right 72% of the time, the letter matching it 37%), so four more heads are taught:

- layer 0, head 2: at every token of an option after its letter, that letter ("(B) green": "green" -> "B");
- layer 0, head 3: at every word of an option (articles dropped), the option's words up to it, so the last
  word holds the whole option ("an orange triangle" apart from "a red triangle" and "an orange square");
- layer 1, head 1: where the letter is predicted, the last place the answer named the correct option;
- layer 2, head 0: from the same position, the correct option's last word in the list, which holds its letter.

These read the question and the trained answer only, so they apply to any QCM -> "The answer is X." record,
real ScienceQA included, as long as the options' line ends at a newline or at `llava_v0`'s `###`. The
answer they read is the one the next-token loss already trains on: they add no information, only say where
the model should find it.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy
import torch
from transformers import LlavaForConditionalGeneration
from transformers.models.llama.modeling_llama import rotate_half

from llava.data.world import Scene, furthest
from llava.model.tiny import COLORS, SHAPES, SIZES
from llava.train.clip import box_cover
from llava.train.sequences import IGNORE, Example

SHAPE_HEAD, COLOR_HEAD = (0, 0), (0, 1)  # (layer, head) that learn to look from shape / colour words
NEXT_HEAD = (1, 0)  # ... from the token after a shape word
COUNT_HEAD, PAIR_COUNT_HEAD = (0, 4), (1, 4)  # shape / colour word, token after a shape word -> first token + objects
COUNTING_HEADS = (COUNT_HEAD, PAIR_COUNT_HEAD)
OPTION_HEAD, SPAN_HEAD = (0, 2), (0, 3)  # option tokens -> their letter / the option's words so far
PHRASE_HEAD = (1, 2)  # article, size, colour of an object phrase -> that object
MENTION_HEAD, PICK_HEAD = (1, 1), (2, 0)  # letter position -> the answer's mention / the option's last word
EXTREME_HEAD = (0, 5)  # a question's "highest", "left", ... -> the object furthest that way
RECALL_HEAD = (1, 3)  # the answer's words that choose that object or repeat the word -> the question's word
CHOOSE_HEAD = (2, 1)  # the answer's words that choose that object -> the object, now that they know the word
ANY_WORDS = ("shapes", "objects")  # "How many shapes are there in the image?"
TOLD_RE = re.compile(  # an object phrase of a description: "a small red circle at the bottom left"
    rf"\b(?:a|an) ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
    r"(?: (?:at|on|in) the [a-z]+(?: left| right)?)?"
)
EXTREME_RE = re.compile(  # "Which object is furthest to the left?", "Which object is highest in the image?"
    r"Which object is (?:furthest to the )?(left|right|highest|lowest)(?: in the (?:image|picture))?\?"
)
ANSWER_RE = re.compile(r"The answer is ([A-Z])\.")
MARKER_RE = re.compile(r"\(([A-Z])\) ")
ARTICLE_RE = re.compile(r"^(?:a|an|the) ", re.IGNORECASE)
PHRASE_RE = re.compile(  # "a large red circle at the top left", "The red circle is at the top", "the red circle"
    rf"\b(?:[Aa]|[Aa]n|[Tt]he) (?:({'|'.join(SIZES)}) )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
    r"( (?:is )?(?:at|on|in) the [a-z]+(?: left| right)?)?"
)


@dataclass(frozen=True, slots=True)
class Target:
    position: int  # the query token
    layer: int
    head: int
    start: int  # first key position the target covers (the first image token, say)
    weights: torch.Tensor  # (n,) where the head should look over positions start..start+n-1, sums to 1
    importance: float = 1.0  # its share of the loss against the others' 1 (rare look-ups can count for more)
    asked: bool = False  # a counting look in a "how many" question of a kind (`asks_count`)


def word_ids(tokenizer) -> dict[int, tuple[str, str]]:
    """Token id -> ("shape" | "color" | "any", word) for the words whose objects a head learns to find ("any":
    "shapes", "objects", which only the counting heads use).

    Only words that are one token with their leading space are supervised: a word split into pieces
    ("Triangle" -> T/ri/angle) has no single query position that means it.
    """
    words = [("shape", s, w) for s in SHAPES for w in (s, s + "s")] + [("color", c, c) for c in COLORS]
    words += [("any", w, w) for w in ANY_WORDS]
    out = {}
    for kind, key, w in words:
        ids = tokenizer(" " + w, add_special_tokens=False).input_ids
        if len(ids) == 1:
            out[ids[0]] = (kind, key)
    return out


LINK_WORDS = ("is", "a", "an")  # "The blue object is a" -> circle


@dataclass(frozen=True, slots=True)
class ObjectWords:
    """Token ids of " object" and of the words that may follow it before the shape is named (`object_words`)."""

    noun: int
    links: frozenset[int]

    def after_color(self, ids: Sequence[int], pos: int) -> list[int]:
        """The positions of "object is a" right after a colour word at `pos` ("The blue object is a" -> circle):
        the tokens that go on to name the shape of the object of that colour."""
        if pos + 1 >= len(ids) or ids[pos + 1] != self.noun:
            return []
        out = [pos + 1]
        while out[-1] + 1 < len(ids) and ids[out[-1] + 1] in self.links and len(out) < 1 + len(LINK_WORDS):
            out.append(out[-1] + 1)
        return out


def object_words(tokenizer) -> ObjectWords | None:
    """The tokenizer's ids for `ObjectWords`; None when " object" is not one token."""
    ids = {w: tokenizer(" " + w, add_special_tokens=False).input_ids for w in ("object", *LINK_WORDS)}
    if len(ids["object"]) != 1:
        return None
    return ObjectWords(ids["object"][0], frozenset(v[0] for w, v in ids.items() if w != "object" and len(v) == 1))


def example_targets(
    example: Example,
    scene: Scene,
    words: dict[int, tuple[str, str]],
    image_token_id: int,
    n_image_tokens: int,
    absent: bool = False,
    count: bool = False,
    linked: ObjectWords | None = None,
    count_center: bool = False,
    many: int | None = None,
) -> list[Target]:
    """The supervised positions of one example: its shape and colour words after the picture whose
    objects are in the scene (a question about an absent shape has nothing to look at), and the tokens
    right after those shape words; with `absent`, after every shape word, at the first token where the
    phrase names nothing there; with `count`, the counting heads at every shape and colour word and at
    "shapes" / "objects", and after every one of those nouns (with `count_center`, each object's share on the
    patches around its centre); with `linked`, "object is a" after a colour word (NEXT_HEAD, the objects of that
    colour). `many`, the token id of " many": the counting looks of a "how many" question are marked `asked`."""
    ids = example.input_ids
    if image_token_id not in ids:
        return []
    start = ids.index(image_token_id)
    grid = int(round(n_image_tokens**0.5))
    if grid * grid != n_image_tokens:
        raise ValueError(f"{n_image_tokens} image tokens are not a square grid")
    out = []
    for pos, layer_head, objects in word_looks(
        ids, start + n_image_tokens, scene.objects, words, absent, count, linked
    ):
        if layer_head in COUNTING_HEADS:
            asked = many is not None and asks_count(ids, pos, layer_head, words, many)
            out.append(Target(pos, *layer_head, 0, _counted(objects, grid, start, count_center), asked=asked))
        elif objects:
            out.append(Target(pos, *layer_head, start, _cover(objects, grid)))
        else:  # nothing to find: the first token, so "found it or not" is one signal, not half a match
            out.append(Target(pos, *layer_head, 0, torch.ones(1)))
    return out


def asks_count(ids: Sequence[int], pos: int, layer_head: tuple[int, int], words: dict[int, tuple[str, str]],
               many: int) -> bool:  # fmt: skip
    """Whether the counting look at `pos` answers a "how many" of one colour or shape: the colour or shape word
    right after "many" ("How many red shapes", "How many squares"), or the token after such a question's noun
    ("are"). The whole picture's count ("How many shapes") is not one."""

    def kind(p: int) -> str:
        return words.get(ids[p], ("", ""))[0]

    if layer_head == COUNT_HEAD:
        return ids[pos - 1] == many and kind(pos) in ("shape", "color")
    noun = pos - 1
    return (kind(noun) == "shape" and ids[noun - 1] == many) or (
        kind(noun) in ("shape", "any") and kind(noun - 1) == "color" and ids[noun - 2] == many
    )


def word_looks(ids: Sequence[int], begin: int, things: Sequence, words: dict[int, tuple[str, str]], absent: bool,
               count: bool, linked: ObjectWords | None) -> Iterator[tuple[int, tuple[int, int], list]]:  # fmt: skip
    """(position, (layer, head), the things it looks at) for every word look-up from `begin` on (`example_targets`
    says which), over `things` that have a `.shape` and a `.color`: objects of a scene or of a description. The
    counting heads' things are counted, the others' looked at; an empty list: at the first token instead."""
    for pos in range(begin, len(ids)):
        if ids[pos] not in words:
            continue
        kind, key = words[ids[pos]]
        objects = [o for o in things if kind == "any" or (o.shape if kind == "shape" else o.color) == key]
        if objects and kind != "any":
            yield pos, SHAPE_HEAD if kind == "shape" else COLOR_HEAD, objects
        if count:
            yield pos, COUNT_HEAD, objects
        if kind == "color" and linked is not None and objects:
            yield from ((k, NEXT_HEAD, objects) for k in linked.after_color(ids, pos))
        if kind == "color" or pos + 1 >= len(ids):
            continue
        before = words.get(ids[pos - 1])
        color = before[1] if before is not None and before[0] == "color" else None
        named = [o for o in objects if color in (None, o.color)]
        if count:
            yield pos + 1, PAIR_COUNT_HEAD, named
        if kind == "any" or not (objects or absent):
            continue
        yield pos + 1, NEXT_HEAD, named if absent else named or objects


# a picture's boxes come back in many combinations; the covers are only read
_box_cover = functools.lru_cache(maxsize=1 << 16)(box_cover)


# Targets share their weights (read-only): a picture's objects are looked up by many words, and building the
# same few tensors anew for every one of them took most of the time targets take (13 min for 84,000 records)
@functools.lru_cache(maxsize=1 << 16)
def _cover_of(boxes: tuple[tuple[float, float, float, float], ...], grid: int) -> torch.Tensor:
    cover = sum(_box_cover(box, grid) for box in boxes)
    return cover / cover.sum()


def _cover(objects, grid: int) -> torch.Tensor:
    return _cover_of(tuple(o.box for o in objects), grid)


def center_spread(box: tuple[float, float, float, float], grid: int) -> torch.Tensor:
    """(grid*grid,) weight 1 over the (up to) four patches whose centres surround the box's centre, bilinear in
    the distance to each, row-major as `box_cover`."""
    out = torch.zeros(grid, grid)
    fx = min(max((box[0] + box[2]) / 2 * grid - 0.5, 0.0), grid - 1.0)  # in patch units from the first centre
    fy = min(max((box[1] + box[3]) / 2 * grid - 0.5, 0.0), grid - 1.0)
    x0, y0 = min(int(fx), grid - 2), min(int(fy), grid - 2)
    ax, ay = fx - x0, fy - y0
    out[y0 : y0 + 2, x0 : x0 + 2] = torch.tensor([[(1 - ax) * (1 - ay), ax * (1 - ay)], [(1 - ax) * ay, ax * ay]])
    return out.flatten()


@functools.lru_cache(maxsize=1 << 16)
def _counted_of(
    boxes: tuple[tuple[float, float, float, float], ...], grid: int, image_start: int, center: bool
) -> torch.Tensor:
    weights = torch.zeros(image_start + grid * grid)
    weights[0] = 1.0
    for box in boxes:
        if center:
            weights[image_start:] += center_spread(box, grid)
        else:
            cover = _box_cover(box, grid)
            weights[image_start:] += cover / cover.sum()
    return weights / weights.sum()


def counted_number(target: Target) -> int:
    """How many objects a counting head's target counts: the first token's share is 1/(k+1)."""
    return round(1.0 / float(target.weights[0])) - 1


def _counted(objects, grid: int, image_start: int, center: bool = False) -> torch.Tensor:
    """Over positions 0..the last image token: the first token and each object 1/(k+1) each, an object's share
    spread by how much of each patch its box covers, or (`center`) on the patches around its box's centre."""
    return _counted_of(tuple(o.box for o in objects), grid, image_start, center)


def grounding_targets(
    examples: Sequence[Example],
    scenes: dict[str, Scene],
    tokenizer,
    image_token_id: int,
    n_image_tokens: int,
    absent: bool = False,
    count: bool = False,
    link: bool = False,
    described: bool = False,
    extreme: float = 0.0,
    count_center: bool = False,
) -> list[list[Target]]:
    """Targets of every example, in order: its words' objects (examples with a picture, and with `described`
    those whose text context describes one: `described_targets`; `absent`, `count`, `link`, `count_center`: see
    `example_targets`; `extreme` > 0: `extreme_targets`, with that `importance`) and its option look-ups
    (examples that answer "The answer is X.")."""
    words = word_ids(tokenizer)
    pieces = TokenText(tokenizer)
    many_ids = tokenizer(" many", add_special_tokens=False).input_ids
    many = many_ids[0] if len(many_ids) == 1 else None  # in pieces (a small vocabulary): no question is marked
    linked = object_words(tokenizer) if link else None

    def of(e: Example) -> list[Target]:
        targets = option_targets(e, pieces)
        if e.image is not None:
            scene = scenes[e.image]
            targets += example_targets(
                e, scene, words, image_token_id, n_image_tokens, absent, count, linked, count_center, many
            )
            targets += phrase_targets(e, scene, pieces, image_token_id, n_image_tokens)
            if extreme:
                targets += extreme_targets(e, scene, pieces, image_token_id, n_image_tokens, extreme)
        elif described:
            targets += described_targets(e, pieces, words, count, linked)
        return targets

    return [[moved(e, k, t) for k, m in enumerate(e.members) for t in of(m)] if e.members else of(e) for e in examples]


@dataclass(frozen=True, slots=True)
class _Told:
    """An object a text context describes: what it is and the tokens of its phrase."""

    color: str
    shape: str
    size: str
    tokens: tuple[int, ...]


def described_objects(example: Example, pieces: TokenText) -> tuple[list[_Told], int]:
    """The objects the first `Context:` line describes ("... a small red circle at the bottom and a large green
    square at the top right."), each with its phrase's tokens, place included; and the first token after that
    line (0 and no objects when there is none)."""
    text, starts = pieces(example.input_ids)
    at = text.find("Context: ")
    if at < 0:
        return [], 0
    line_end = min(i for i in (text.find("\n", at), text.find("#", at), len(text)) if i >= 0)
    told = [
        _Told(m.group(2), m.group(3), m.group(1), tuple(_tokens(starts, m.start(), m.end())))
        for m in TOLD_RE.finditer(text, at, line_end)
    ]
    after = _tokens(starts, line_end, line_end + 1)
    return told, (after[0] if after else len(example.input_ids))


def _spread(groups: Sequence[Sequence[int]], start: int, end: int, first_token: bool = False) -> torch.Tensor | None:
    """Weights over positions start..end-1: each group of positions an equal share, spread evenly in it (with
    `first_token`, position 0 one more share, as the counting heads' targets); start must be 0 then."""
    # summed in float32 as tensor additions would (a position twice in a group takes its share once), in Python:
    # one small tensor made per target, not one indexing per group
    weights = [numpy.float32(0.0)] * (end - start)
    for group in groups:
        share = numpy.float32(1 / len(group))
        for k in set(group):
            weights[k - start] += share
    if first_token:
        weights[0] += numpy.float32(1.0)
    out = torch.tensor(numpy.array(weights, dtype=numpy.float32))
    return out / out.sum() if out.sum() > 0 else None


def described_targets(
    example: Example,
    pieces: TokenText,
    words: dict[int, tuple[str, str]],
    count: bool = False,
    linked: ObjectWords | None = None,
) -> list[Target]:
    """The picture's look-ups, in a text that describes it instead: the description's object phrases stand in
    for the objects' patches. After the `Context:` line, every shape and colour word looks at the phrases of
    its objects (SHAPE_HEAD, COLOR_HEAD), the token after a shape word at those of the colour named before it
    (NEXT_HEAD), and the answer's object phrases' article, size and colour at their object's phrase
    (PHRASE_HEAD), its place words too (NEXT_HEAD); with `count` and `linked`, as over a picture."""
    told, after = described_objects(example, pieces)
    if not told:
        return []
    ids = example.input_ids
    first, end = told[0].tokens[0], told[-1].tokens[-1] + 1

    def look(position: int, layer_head: tuple[int, int], objects: Sequence[_Told]) -> Target | None:
        weights = _spread([o.tokens for o in objects], first, end)
        return None if weights is None else Target(position, *layer_head, first, weights)

    def counted(position: int, layer_head: tuple[int, int], objects: Sequence[_Told]) -> Target:
        return Target(position, *layer_head, 0, _spread([o.tokens for o in objects], 0, end, first_token=True))

    out: list[Target | None] = [
        counted(pos, layer_head, objects) if layer_head in COUNTING_HEADS else look(pos, layer_head, objects)
        for pos, layer_head, objects in word_looks(ids, after, told, words, False, count, linked)
    ]
    out += [look(k, layer_head, objects) for k, layer_head, objects in phrase_looks(example, pieces, after, told)]
    return [t for t in out if t is not None]


def extreme_targets(
    example: Example,
    scene: Scene,
    pieces: TokenText,
    image_token_id: int,
    n_image_tokens: int,
    importance: float = 1.0,
) -> list[Target]:
    """Finding the object furthest one way. In "Which object is highest?" the direction word looks at the highest
    object's patches (EXTREME_HEAD, layer 0: the word alone is the query, the patches' place is in their keys). In
    the answer to it, up to the next question, the tokens that choose that object (the article, size and colour of
    a phrase naming it: "The red circle is ...") and the token that predicts the direction word again ("So the
    object" -> highest) look at the question's direction word (RECALL_HEAD, layer 1); then the choosing tokens,
    which now know the direction, look at the object itself (CHOOSE_HEAD, layer 2), whose patches say what it is,
    as a shape word's next token reads its object's colour. Questions whose two furthest objects are within 0.1 are
    left alone. The looks at the object count `importance` times as much as one of the others in the loss (such
    questions are rare)."""
    ids, labels = example.input_ids, example.labels
    text, starts = pieces(ids)
    image = ids.index(image_token_id)
    grid = int(round(n_image_tokens**0.5))
    out = []
    for m in EXTREME_RE.finditer(text):
        word = _tokens(starts, m.start(1), m.end(1))
        best = furthest(scene.objects, m.group(1))
        if best is None or len(word) != 1 or labels[word[0]] != IGNORE:
            continue
        asked = word[0]
        out.append(Target(asked, *EXTREME_HEAD, image, _cover([best], grid), importance))
        end = text.find("###Human", m.end())
        end = len(text) if end < 0 else end
        choose, repeat = set(), set()
        for p in PHRASE_RE.finditer(text, m.end(), end):
            if (p.group(2), p.group(3)) == (best.color, best.shape) and p.group(1) in (None, best.size):
                choose.update(k for k in _tokens(starts, p.start(), p.end(3))[:-1] if labels[k] != IGNORE)
        for w in re.finditer(rf"\b(?:object|is) (?:furthest to the )?({m.group(1)})\b", text[m.end() : end]):
            repeat.update(k - 1 for k in _tokens(starts, m.end() + w.start(1), m.end() + w.end(1))[:1])
        recall = sorted(choose | {k for k in repeat if labels[k] != IGNORE})
        out += [Target(k, *RECALL_HEAD, asked, torch.ones(1)) for k in recall]
        out += [Target(k, *CHOOSE_HEAD, image, _cover([best], grid), importance) for k in sorted(choose)]
    return out


def moved(packed: Example, member: int, target: Target) -> Target:
    """A target of `packed.members[member]` where it stands in the packed row: its query and its keys (all in the
    shared prefix, the picture, or all in the member's own tokens) move with their tokens."""
    last = target.start + len(target.weights) - 1
    if target.start < packed.prefix <= last:
        raise ValueError(f"a target's keys {target.start}..{last} straddle the packed prefix ({packed.prefix})")
    return replace(
        target,
        position=packed.packed_index(member, target.position),
        start=packed.packed_index(member, target.start),
    )


def phrase_targets(
    example: Example, scene: Scene, pieces: TokenText, image_token_id: int, n_image_tokens: int
) -> list[Target]:
    """In every object phrase of the answers ("a large red circle at the top left", "The red circle is at the
    top") whose object is in the scene: its article, size and colour tokens (PHRASE_HEAD) and its place words
    after the one right after the shape word (NEXT_HEAD, which `example_targets` covers) look at that object.
    Without a size, the phrase names every object of its colour and shape."""
    image = example.input_ids.index(image_token_id)
    grid = int(round(n_image_tokens**0.5))
    looks = phrase_looks(example, pieces, image + n_image_tokens, scene.objects)
    return [Target(k, *layer_head, image, _cover(objects, grid)) for k, layer_head, objects in looks]


def phrase_looks(
    example: Example, pieces: TokenText, begin: int, things: Sequence
) -> Iterator[tuple[int, tuple[int, int], list]]:
    """(position, (layer, head), the things it looks at) for `phrase_targets`, in the phrases from token `begin`
    on, over `things` that have a `.color`, `.shape` and `.size`: objects of a scene or of a description."""
    text, starts = pieces(example.input_ids)
    for m in PHRASE_RE.finditer(text, starts[begin] if begin < len(example.input_ids) else len(text)):
        size, color, shape = m.group(1, 2, 3)
        objects = [o for o in things if (o.color, o.shape) == (color, shape) and size in (None, o.size)]
        if not objects:
            continue
        said = _tokens(starts, m.start(), m.end(3))[:-1]
        after_shape = _tokens(starts, m.start(3), m.end(3))[-1] + 1
        place = [k for k in _tokens(starts, m.start(4), m.end(4))[:-1] if k > after_shape] if m.group(4) else []
        # only the answer's phrases: which object a question names is not the model's choice
        yield from ((k, PHRASE_HEAD, objects) for k in said if example.labels[k] != IGNORE)
        yield from ((k, NEXT_HEAD, objects) for k in place if example.labels[k] != IGNORE)


class TokenText:
    """Each token's text, cached: an example's string and where each token starts in it. The last example's
    text is kept too, since its option and phrase targets both read it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}
        self.last: tuple[Sequence[int], tuple[str, list[int]]] | None = None

    def __call__(self, ids: Sequence[int]) -> tuple[str, list[int]]:
        if self.last is not None and self.last[0] is ids:
            return self.last[1]
        texts = [self.cache.get(i) or self.cache.setdefault(i, self.tokenizer.decode([i])) for i in ids]
        starts = [0]
        for t in texts:
            starts.append(starts[-1] + len(t))
        self.last = (ids, ("".join(texts), starts))
        return self.last[1]


def _tokens(starts: list[int], begin: int, end: int) -> list[int]:
    """Tokens overlapping characters begin..end-1: k with starts[k] < end and starts[k + 1] > begin (`starts`
    never falls, so both hold over one run of k)."""
    first = max(bisect.bisect_right(starts, begin) - 1, 0)
    return list(range(first, min(bisect.bisect_left(starts, end), len(starts) - 1)))


def _uniform(position: int, layer_head: tuple[int, int], keys: list[int]) -> Target:
    """A target spread evenly over `keys` (one contiguous run of positions)."""
    return Target(position, *layer_head, keys[0], torch.full((len(keys),), 1 / len(keys)))


def option_targets(example: Example, pieces: TokenText) -> list[Target]:
    """The option look-up targets of every trained `The answer is X.` in the example: option words -> their
    letter in the last `Options:` list before it, and from the position that predicts X, the correct option
    where the answer last named it and in the list. The text is rebuilt from the tokens, so this holds for any
    tokenizer whose tokens decode to their own characters (byte-level BPE on ASCII text)."""
    text, starts = pieces(example.input_ids)
    out: list[Target] = []
    for m in ANSWER_RE.finditer(text):
        (letter_token,) = _tokens(starts, m.start(1), m.end(1))
        if example.labels[letter_token] == IGNORE or letter_token == 0:
            continue  # in the prompt, not something the model was taught to say
        position = letter_token - 1
        listed = text.rfind("Options:", 0, m.start())
        if listed < 0:
            continue
        line_end = min(i for i in (text.find("\n", listed), text.find("#", listed), len(text)) if i >= 0)
        markers = list(MARKER_RE.finditer(text, listed, line_end))
        spans = {}  # letter -> (letter's character, the option's words without an article: begin, end)
        for k, mk in enumerate(markers):
            end = markers[k + 1].start() if k + 1 < len(markers) else line_end
            option = text[mk.end() : end].rstrip()
            core = ARTICLE_RE.sub("", option)
            spans[mk.group(1)] = (mk.start(1), mk.end() + len(option) - len(core), mk.end() + len(option))
        spans = {letter: span for letter, span in spans.items() if span[1] < span[2]}  # empty options name nothing
        if m.group(1) not in spans:
            continue
        for letter_at, begin, end in spans.values():
            (letter_key,) = _tokens(starts, letter_at, letter_at + 1)
            words = [k for k in _tokens(starts, begin, end) if k > letter_key]
            for k in range(letter_key + 1, words[-1] + 1):
                out.append(_uniform(k, OPTION_HEAD, [letter_key]))
            out += [_uniform(k, SPAN_HEAD, words[: n + 1]) for n, k in enumerate(words)]
        _, begin, end = spans[m.group(1)]
        core = text[begin:end]
        out.append(_uniform(position, PICK_HEAD, _tokens(starts, begin, end)[-1:]))
        said = _answer_start(example.labels, letter_token, starts)
        named = [
            x for x in re.finditer(rf"\b{re.escape(core)}\b", text[: m.start()], re.IGNORECASE) if x.start() >= said
        ]
        if named:
            out.append(_uniform(position, MENTION_HEAD, _tokens(starts, named[-1].start(), named[-1].end())))
    return out


def _answer_start(labels: Sequence[int], token: int, starts: list[int]) -> int:
    """The first character of the assistant turn that holds `token` (its run of trained tokens)."""
    while token > 0 and labels[token - 1] != IGNORE:
        token -= 1
    return starts[token]


def attention_logprobs(
    model: LlavaForConditionalGeneration,
    layer_input: torch.Tensor,
    layer_index: int,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    heads: torch.Tensor,
    segments: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, T) log attention of LM layer `layer_index`, head `heads[i]`, from `positions[i]` of batch row
    `rows[i]`, over the whole (causal, unpadded) sequence: what the layer's softmax computes from its input
    `layer_input` (B, T, H). Packed rows need their `segments` and `position_ids` (`Batch`)."""
    lm = model.model.language_model
    layer = lm.layers[layer_index]
    attn = layer.self_attn
    if attn.num_key_value_groups != 1:
        raise ValueError("grounding supports LMs with as many key/value heads as query heads")
    B, T, _ = layer_input.shape
    x = layer.input_layernorm(layer_input)
    if position_ids is None:
        position_ids = torch.arange(T, device=x.device)[None].expand(B, T)
    cos, sin = lm.rotary_emb(x, position_ids)  # (B, T, hd)
    # queries only where a target is (a few hundred of the batch's B * T positions); keys everywhere
    q = attn.q_proj(x[rows, positions]).view(len(rows), -1, attn.head_dim)[
        torch.arange(len(rows), device=x.device), heads
    ]
    q = q * cos[rows, positions] + rotate_half(q) * sin[rows, positions]  # (n, hd)
    k = attn.k_proj(x).view(B, T, -1, attn.head_dim).transpose(1, 2)  # (B, heads, T, hd)
    k = k * cos[:, None] + rotate_half(k) * sin[:, None]
    # one matmul per (row, head) the targets use, not a copy of the keys per target: the queries of a group
    # side by side, padded to the largest group
    groups, group = torch.unique(rows * k.shape[1] + heads, return_inverse=True)  # (G,), (n,)
    sizes = torch.bincount(group, minlength=len(groups))
    order = torch.argsort(group, stable=True)
    slot = torch.empty_like(group)
    slot[order] = torch.arange(len(group), device=x.device) - (sizes.cumsum(0) - sizes)[group[order]]
    queries = q.new_zeros(len(groups), int(sizes.max()), attn.head_dim).index_put((group, slot), q)
    keys = k.reshape(-1, T, attn.head_dim)[groups]  # (G, T, hd)
    scores = torch.bmm(queries, keys.transpose(1, 2))[group, slot] * attn.scaling  # (n, T)
    seen = (torch.arange(T, device=x.device)[None] <= positions[:, None]) & attention_mask[rows].bool()
    if segments is not None:  # a packed row: the shared prefix and the query's own segment
        keys = segments[rows]  # (n, T)
        seen &= (keys == 0) | (keys == keys.gather(1, positions[:, None]))
    return scores.float().masked_fill(~seen, float("-inf")).log_softmax(-1)


def grounding_loss(
    model: LlavaForConditionalGeneration,
    layer_inputs: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    targets: Sequence[Sequence[Target]],
    segments: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the supervised heads' attention against their targets, weighted by their
    `importance`; `targets[b]` are those of batch row b, `layer_inputs[l]` (B, T, H) the input of decoder layer l.
    Zero when the batch has none. Packed rows need their `segments` and `position_ids` (`Batch`)."""
    flat = [(b, t) for b, row in enumerate(targets) for t in row]
    if not flat:
        return layer_inputs[0].new_zeros(())
    needed = layers_needed(targets)
    if needed > len(layer_inputs):
        raise ValueError(f"targets reach layer {needed - 1}; only {len(layer_inputs)} layer inputs kept")
    losses, importance = [], []
    for layer in sorted({t.layer for _, t in flat}):
        here = [(b, t) for b, t in flat if t.layer == layer]
        device = layer_inputs[layer].device
        rows, positions, heads = (
            torch.tensor(v, device=device) for v in zip(*[(b, t.position, t.head) for b, t in here], strict=True)
        )
        logp = attention_logprobs(
            model, layer_inputs[layer], layer, attention_mask, rows, positions, heads, segments, position_ids
        )
        want = torch.zeros_like(logp)
        for n, (_, t) in enumerate(here):
            want[n, t.start : t.start + len(t.weights)] = t.weights.to(device)
        losses.append(-(want * logp.masked_fill(want == 0, 0.0)).sum(-1))
        importance.append(torch.tensor([t.importance for _, t in here], device=device))
    share = torch.cat(importance)
    return (torch.cat(losses) * share).sum() / share.sum()


def check_heads(model: LlavaForConditionalGeneration, targets: Sequence[Sequence[Target]]) -> None:
    """Raise ValueError if a target names a layer or head the language model does not have."""
    text = model.config.text_config
    layers, heads = text.num_hidden_layers, text.num_attention_heads
    bad = sorted({(t.layer, t.head) for row in targets for t in row if t.layer >= layers or t.head >= heads})
    if bad:
        raise ValueError(
            f"grounding targets name (layer, head) {bad}; the language model has {layers} layers of {heads} heads"
        )


def layers_needed(targets: Sequence[Sequence[Target]]) -> int:
    """How many decoder-layer inputs `grounding_loss` needs for these targets."""
    return 1 + max((t.layer for row in targets for t in row), default=0)
