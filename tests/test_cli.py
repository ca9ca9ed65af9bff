"""The CLI as a user runs it: a subprocess, one-shot and multi-turn over stdin."""

import os
import subprocess
import sys

from llava.conversation import conv_templates
from llava.generation import GenerationParams, generate
from llava.images import load_image

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _run(args, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "llava.cli", *args], input=stdin, capture_output=True, text=True, env=ENV, timeout=180
    )


def test_one_shot_prompt_matches_library(tiny_ckpt, tiny_loaded, tmp_path, shapes_image):
    image = tmp_path / "shapes.png"
    shapes_image.save(image)
    proc = _run(
        [
            "--model-path",
            str(tiny_ckpt),
            "--image-file",
            str(image),
            "--prompt",
            "What color is the circle?",
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    conv = conv_templates["llava_v0"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat color is the circle?")
    conv.append_message(conv.roles[1], None)
    expected = generate(
        tiny_loaded,
        conv.get_prompt(),
        [load_image(image)],
        GenerationParams(temperature=0, max_new_tokens=8, stop=("###",)),
    )
    assert proc.stdout.strip() == expected.text.strip()


def test_multi_turn_over_stdin(tiny_ckpt, tmp_path, shapes_image):
    image = tmp_path / "shapes.png"
    shapes_image.save(image)
    proc = _run(
        ["--model-path", str(tiny_ckpt), "--image-file", str(image), "--temperature", "0", "--max-new-tokens", "4"],
        stdin="How many shapes?\nAnd colours?\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Human: ") == 3  # two questions, then the prompt that meets end of input
    assert proc.stdout.count("Assistant: ") == 2


def test_bad_inputs_get_clear_errors(tiny_ckpt, tmp_path):
    proc = _run(["--model-path", str(tmp_path / "nope"), "--prompt", "hi"])
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a picture")
    proc = _run(["--model-path", str(tiny_ckpt), "--image-file", str(bad), "--prompt", "hi"])
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
