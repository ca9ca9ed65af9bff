"""Render the example gallery: pictures of the synthetic world and the prompts shown with them.

    python examples/build_examples.py            # writes examples/images/ex-*.png and examples/examples.json
    python examples/build_examples.py --check    # exits 1 if the committed files differ from a fresh render

The scenes are written out by hand (not sampled) so that every prompt has one right answer, and are drawn by
the project's own renderer, `llava.data.world.render`. Chat examples ask the canonical questions of DESIGN.md
for `llava-shapes-chat`; ScienceQA examples use the paper's QCM form for `llava-shapes-sqa`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from llava.data.scienceqa import lea_answer, qcm_prompt  # noqa: E402
from llava.data.world import RenderStyle, Scene, SceneObject, render  # noqa: E402

HERE = Path(__file__).resolve().parent
RESOLUTION = 256  # pixels; the models' processors resize, this is for people looking at the gallery
CHAT, SQA = "llava-shapes-chat", "llava-shapes-sqa"


def obj(shape: str, color: str, size: str, x: float, y: float) -> SceneObject:
    """An object whose box has its top-left corner at (x, y); small boxes are 0.17 wide, large ones 0.32."""
    side = 0.17 if size == "small" else 0.32
    return SceneObject(shape, color, size, (x, y, round(x + side, 3), round(y + side, 3)))


def sqa(question: str, choices: list[str], answer: int, solution: str, hint: str = "") -> tuple[str, str]:
    """(prompt, reference answer) of a ScienceQA-schema problem, in the paper's QCM -> LEA form."""
    problem = {"question": question, "choices": choices, "answer": answer, "hint": hint, "solution": solution}
    return qcm_prompt(problem), lea_answer(problem)


# id, title, model, prompt, reference answer, objects
EXAMPLES: list[tuple[str, str, str, str, str, list[SceneObject]]] = [
    ("color-of-circle", "Colour of a shape", CHAT, "What color is the circle?", "The circle is red.",
     [obj("circle", "red", "large", 0.10, 0.30), obj("square", "blue", "small", 0.65, 0.42)]),
    ("shape-of-green", "Shape of a colour", CHAT, "What shape is the green object?",
     "The green object is a triangle.",
     [obj("triangle", "green", "large", 0.08, 0.55), obj("circle", "yellow", "small", 0.70, 0.10),
      obj("square", "purple", "small", 0.72, 0.70)]),
    ("count-all", "Counting", CHAT, "How many shapes are there in the image?", "There are three shapes in the image.",
     [obj("square", "orange", "small", 0.10, 0.10), obj("circle", "blue", "large", 0.55, 0.20),
      obj("triangle", "red", "small", 0.20, 0.65)]),
    ("count-circles", "Counting one kind", CHAT, "How many circles are there?", "There are two circles.",
     [obj("circle", "orange", "small", 0.08, 0.12), obj("circle", "blue", "large", 0.52, 0.52),
      obj("square", "green", "small", 0.70, 0.10)]),
    ("yes-no", "Yes or no", CHAT, "Is there a purple square in the image?", "Yes, there is a purple square.",
     [obj("square", "purple", "large", 0.12, 0.12), obj("triangle", "red", "small", 0.65, 0.70)]),
    ("where", "Where is it?", CHAT, "Where is the orange triangle?", "The orange triangle is on the right.",
     [obj("triangle", "orange", "large", 0.62, 0.34), obj("circle", "blue", "small", 0.10, 0.42)]),
    ("describe", "Detailed description", CHAT, "Describe the image in detail.",
     "The image shows four shapes: a large yellow circle at the top left, a small green square at the top right, "
     "a small red triangle at the bottom left and a large purple triangle at the bottom right.",
     [obj("circle", "yellow", "large", 0.06, 0.06), obj("square", "green", "small", 0.72, 0.10),
      obj("triangle", "red", "small", 0.12, 0.74), obj("triangle", "purple", "large", 0.60, 0.60)]),
    ("sqa-which-red", "ScienceQA: which shape", SQA,
     *sqa("Which shape is red?", ["circle", "square", "triangle"], 1,
          "Look at the picture. The red object is a square."),
     [obj("square", "red", "large", 0.14, 0.30), obj("circle", "yellow", "small", 0.68, 0.40)]),
    ("sqa-count", "ScienceQA: counting", SQA,
     *sqa("How many shapes are in the picture?", ["two", "three", "four"], 2,
          "Count the shapes in the picture. There are four."),
     [obj("circle", "green", "small", 0.10, 0.10), obj("square", "blue", "small", 0.70, 0.12),
      obj("triangle", "orange", "small", 0.12, 0.70), obj("circle", "purple", "large", 0.56, 0.56)]),
    ("sqa-color", "ScienceQA: colour", SQA,
     *sqa("What color is the circle in the picture?", ["blue", "green", "orange"], 1,
          "Look at the picture. The circle is green."),
     [obj("circle", "green", "large", 0.40, 0.08), obj("triangle", "blue", "small", 0.10, 0.70),
      obj("square", "orange", "small", 0.70, 0.72)]),
]  # fmt: skip


def png_bytes(scene: Scene) -> bytes:
    buf = io.BytesIO()
    render(scene, RenderStyle(resolution=RESOLUTION)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def build() -> dict[str, bytes]:
    """Every file of the gallery, relative to examples/, as bytes."""
    files: dict[str, bytes] = {}
    entries = []
    for ex_id, title, model, prompt, answer, objects in EXAMPLES:
        image = f"images/ex-{ex_id}.png"
        files[image] = png_bytes(Scene(tuple(objects)))
        entries.append({
            "id": ex_id,
            "title": title,
            "image": image,
            "prompt": prompt,
            "model": model,
            "kind": "scienceqa" if model == SQA else "chat",
            "answer": answer,
            "scene": [{"shape": o.shape, "color": o.color, "size": o.size, "box": list(o.box)} for o in objects],
        })  # fmt: skip
    doc = {
        "about": "Example gallery of the web UI; generated by examples/build_examples.py, do not edit by hand.",
        "examples": entries,
    }
    files["examples.json"] = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: examples/)")
    p.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = p.parse_args(argv)
    files = build()
    if args.check:
        stale = [name for name, data in files.items() if not (args.out / name).is_file()
                 or (args.out / name).read_bytes() != data]  # fmt: skip
        for name in stale:
            print(f"build_examples: {args.out / name} is missing or out of date", file=sys.stderr)
        return 1 if stale else 0
    for name, data in files.items():
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"build_examples: wrote {len(files) - 1} pictures and examples.json under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
