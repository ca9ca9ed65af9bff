"""Score a chat checkpoint on freshly drawn held-out pictures, through the serving generation path.

Every question is a new `llava_v0` conversation with the picture, rendered by `llava.conversation`
and answered by `llava.generation.generate` (greedy, stop `###`), exactly what a worker does.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from llava.conversation import conv_templates
from llava.data.build import make_style
from llava.data.render_alt import AltStyle, render_alt
from llava.data.world import Scene, render, sample_scene
from llava.eval.questions import AXES, KINDS, Question, bands, canonical_questions, first_number, region_in, score
from llava.generation import GenerationParams, generate
from llava.model.loader import LoadedModel


@dataclass(slots=True)
class ChatResult:
    renderer: str
    per_kind: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # kind -> 0/1 per question
    named: int = 0  # objects a description named with the right colour + shape
    objects: int = 0  # objects in the described pictures
    extra: int = 0  # mentions of objects that are not there
    samples: list[dict] = field(default_factory=list)  # a few question/answer pairs to show
    # every question, its answer and score, question_id "<picture>/<kind>" (one question a kind a picture), for
    # `write_answers` and `python -m llava.eval compare`
    answers: list[dict] = field(default_factory=list)
    # kind -> objects in the picture -> 0/1 per question (describe: 1 when every object is named)
    by_objects: dict[str, dict[int, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    # `where` answers per axis: (the object's band, the band answered or "none") -> questions. Says which way a
    # model errs: it may never say "left", or swap top and bottom
    where_bands: dict[str, dict[tuple[str, str], int]] = field(
        default_factory=lambda: {axis: defaultdict(int) for axis in AXES}
    )
    # "How many shapes are there?" answers: objects -> distinct colours in the picture -> the number answered
    # ("none": no number) -> questions. Says what a model counts: one that counts colours says too few where a
    # colour comes twice, and which way a model errs between three and four shifts from one training run to the next
    count_answers: dict[int, dict[int, dict[str, int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    )

    def add_where(self, exact: str, answer: str) -> None:
        said = region_in(answer)
        truth, told = bands(exact), bands(said) if said else {}
        for axis in AXES:
            self.where_bands[axis][truth[axis], told.get(axis, "none")] += 1

    def add_count(self, scene: Scene, answer: str) -> None:
        said = first_number(answer)
        self.count_answers[len(scene.objects)][colors_in(scene)]["none" if said is None else str(said)] += 1

    def accuracy(self, kind: str) -> float:
        values = self.per_kind.get(kind, [])
        return sum(values) / len(values) if values else float("nan")

    @property
    def named_share(self) -> float:
        return self.named / self.objects if self.objects else float("nan")

    def to_json(self) -> dict:
        return {
            "renderer": self.renderer,
            "accuracy": {k: self.accuracy(k) for k in KINDS if k in self.per_kind},
            "questions": {k: len(v) for k, v in self.per_kind.items()},
            "description_objects_named": self.named_share,
            "description_extra_mentions": self.extra,
            "accuracy_by_objects": {
                k: {n: sum(v) / len(v) for n, v in sorted(self.by_objects[k].items())}
                for k in KINDS
                if k in self.by_objects
            },
            "where_bands": {
                axis: {t: {a: self.where_bands[axis].get((t, a), 0) for a in (*names, "none")} for t in names}
                for axis, names in AXES.items()
            },
            "count_answers": {
                str(n): {str(c): dict(sorted(said.items())) for c, said in sorted(by_colors.items())}
                for n, by_colors in sorted(self.count_answers.items())
            },
            "samples": self.samples,
        }


def colors_in(scene: Scene) -> int:
    """How many different colours the picture's objects have."""
    return len({o.color for o in scene.objects})


def ask(loaded: LoadedModel, image: Image.Image | None, question: str, max_new_tokens: int = 96) -> str:
    """One question in a fresh conversation under the checkpoint's template; the answer, stop trimmed."""
    conv = conv_templates[loaded.template or "llava_v0"].copy()
    conv.append_message(conv.roles[0], (question, image, "Default") if image is not None else question)
    conv.append_message(conv.roles[1], None)
    params = GenerationParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=(conv.stop_str,))
    images = conv.get_images(return_pil=True)
    return generate(loaded, conv.get_prompt(), images, params).text.strip()


def draw(scene: Scene, renderer: str, rng: random.Random) -> Image.Image:
    style = make_style(rng, scene, renderer)
    return render_alt(scene, style) if isinstance(style, AltStyle) else render(scene, style)


def evaluate_chat(
    loaded: LoadedModel,
    n_pictures: int,
    renderer: str,
    seed: int = 1234,
    progress: bool = True,
    n_samples: int = 8,
    max_new_tokens: int | None = None,
) -> ChatResult:
    """Ask every canonical question about `n_pictures` new scenes drawn by `renderer`."""
    rng = random.Random(seed)
    result = ChatResult(renderer)
    for k in tqdm(range(n_pictures), desc=f"chat eval ({renderer})", disable=not progress, mininterval=5.0):
        scene = sample_scene(rng)
        image = draw(scene, renderer, rng)
        for q in canonical_questions(scene, rng):
            budget = max_new_tokens or (160 if q.kind == "describe" else 48)
            answer = ask(loaded, image, q.text, max_new_tokens=budget)
            s = score(q, answer)
            result.per_kind[q.kind].append(s["correct"])
            result.by_objects[q.kind][len(scene.objects)].append(s["correct"])
            if q.kind == "where":
                result.add_where(q.detail["exact"], answer)
            if q.kind == "count":
                result.add_count(scene, answer)
            if q.kind == "describe":
                result.named += int(s["named"])
                result.objects += int(s["objects"])
                result.extra += int(s["extra"])
            if k < n_samples or (not s["correct"] and len(result.samples) < 3 * n_samples):
                result.samples.append(_sample(q, answer, s["correct"]))
            row = {"question_id": f"{k}/{q.kind}", "objects": len(scene.objects), "colors": colors_in(scene)}
            row |= _sample(q, answer, s["correct"])
            result.answers.append(row | {key: int(v) for key, v in s.items() if key != "correct"})
    return result


def write_answers(path: str | Path, result: ChatResult) -> None:
    """Every answer of `result` as JSON Lines (`question_id`, `kind`, `question`, `answer`, `correct`, ...)."""
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in result.answers))


def _sample(q: Question, answer: str, correct: float) -> dict:
    return {"kind": q.kind, "question": q.text, "answer": answer, "correct": bool(correct)}
