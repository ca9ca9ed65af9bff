"""Make a data set of the world: pictures, their symbolic context, instruction data, ScienceQA problems.

    python -m llava.data.build OUT_DIR [--pictures 1000] [--problems 500] [--seed 0] [--renderer alt]
        [--llm-url http://127.0.0.1:8000/v1 --llm-model NAME]   # the paper's LLM teacher instead of the rules

writes `OUT_DIR/images/*.png`, `context.json` (captions + boxes per picture), `llava_instruct.json`
(LLaVA-Instruct format) and `scienceqa/{problems.json, images/<split>/<pid>/image.png, llava_sqa.json}`.
The training pipeline uses the same functions in memory.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from llava.data import teacher as rules
from llava.data.instruct import save_instruct
from llava.data.render_alt import AltStyle, random_alt_style, render_alt
from llava.data.scienceqa import save_problems, to_instruct
from llava.data.sqa_world import make_problems
from llava.data.world import RenderStyle, Scene, random_style, render, sample_scene, scene_context

RENDERERS = ("primary", "alt")
TeachFn = Callable[..., list[rules.QA]]
DEFAULT_MIX = {"conversation": 0.5, "detail": 0.25, "complex_reasoning": 0.25}


@dataclass(frozen=True, slots=True)
class Picture:
    """A named scene and how to draw it; the pixels are made on demand."""

    name: str
    scene: Scene
    style: RenderStyle | AltStyle

    def image(self) -> Image.Image:
        if isinstance(self.style, AltStyle):
            return render_alt(self.scene, self.style)
        return render(self.scene, self.style)


def make_style(rng: random.Random, scene: Scene, renderer: str) -> RenderStyle | AltStyle:
    if renderer == "primary":
        return random_style(rng, len(scene.objects))
    if renderer == "alt":
        return random_alt_style(rng)
    raise ValueError(f"unknown renderer {renderer!r}; use one of {RENDERERS}")


def make_pictures(
    rng: random.Random, n: int, prefix: str, renderer: str = "primary", count_weights: Sequence[float] | None = None
) -> list[Picture]:
    """`n` random pictures; `count_weights[k]` weighs scenes of k + 1 objects (default: uniform)."""
    pictures = []
    for k in range(n):
        scene = sample_scene(rng, count_weights=count_weights)
        pictures.append(Picture(f"{prefix}_{k:06d}.png", scene, make_style(rng, scene, renderer)))
    return pictures


def picture_index(pictures: Sequence[Picture]) -> dict[str, Picture]:
    return {p.name: p for p in pictures}


def instruct_records(
    pictures: Sequence[Picture],
    rng: random.Random,
    mix: dict[str, float] | None = None,
    teach: TeachFn = rules.teach,
    per_picture: int = 1,
) -> list[dict]:
    """LLaVA-Instruct records, `per_picture` per picture, response types drawn by `mix`."""
    mix = mix or DEFAULT_MIX
    types, weights = list(mix), list(mix.values())
    records = []
    for pic in pictures:
        context = scene_context(pic.scene)
        for j in range(per_picture):
            kind = rng.choices(types, weights)[0]
            qas = teach(context, kind, rng)
            records.append(rules.to_record(f"{pic.name.rsplit('.', 1)[0]}-{j}-{kind}", pic.name, qas))
    return records


def sqa_pictures(scenes: dict[str, Scene], rng: random.Random, renderer: str = "primary") -> dict[str, Picture]:
    """A picture per ScienceQA problem id, named as the records name it (`<pid>/image.png`)."""
    return {
        f"{pid}/image.png": Picture(f"{pid}/image.png", scene, make_style(rng, scene, renderer))
        for pid, scene in scenes.items()
    }


def write_dataset(
    out: Path, n_pictures: int, n_problems: int, seed: int, renderer: str, teach: TeachFn = rules.teach
) -> None:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pictures = make_pictures(rng, n_pictures, "shapes", renderer)
    for pic in tqdm(pictures, desc="pictures", unit="img"):
        pic.image().save(out / "images" / pic.name)
    (out / "context.json").write_text(
        json.dumps({p.name: scene_context(p.scene).to_json() for p in pictures}, indent=1)
    )
    save_instruct(instruct_records(tqdm(pictures, desc="teacher"), rng, teach=teach), out / "llava_instruct.json")

    problems, scenes = make_problems(rng, n_problems, "test")
    sqa = out / "scienceqa"
    save_problems(problems, sqa / "problems.json")
    for name, pic in sqa_pictures(scenes, rng, renderer).items():
        path = sqa / "images" / "test" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pic.image().save(path)
    save_instruct([to_instruct(pid, p) for pid, p in problems.items()], sqa / "llava_sqa.json")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m llava.data.build", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--pictures", type=int, default=1000)
    p.add_argument("--problems", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--renderer", choices=RENDERERS, default="primary")
    p.add_argument("--llm-url", help="OpenAI-compatible base URL (…/v1); uses the LLM teacher")
    p.add_argument("--llm-model", default="gpt-4")
    args = p.parse_args(argv)
    teach: TeachFn = rules.teach
    if args.llm_url:
        from llava.data.llm_teacher import LLMTeacher, LLMTeacherConfig

        teach = LLMTeacher(LLMTeacherConfig(args.llm_url, model=args.llm_model)).teach
    write_dataset(args.out, args.pictures, args.problems, args.seed, args.renderer, teach)
    print(args.out.resolve())


if __name__ == "__main__":
    main()
