"""Chat with a LLaVA checkpoint in the terminal: `python -m llava.cli --model-path DIR --image-file F`.

With `--prompt TEXT` it answers once and exits (for scripts); otherwise it chats over many turns.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llava.conversation import conv_templates, template_for_model  # noqa: E402
from llava.errors import LlavaError  # noqa: E402
from llava.generation import GenerationParams, stream_generate  # noqa: E402
from llava.images import PROCESS_MODES, load_image  # noqa: E402
from llava.model import DTYPES  # noqa: E402
from llava.model.loader import load_pretrained, model_name_from_path  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llava.cli", description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True, help="Hugging Face-format LLaVA checkpoint folder")
    p.add_argument("--image-file", help="picture to talk about (optional: text-only chat without it)")
    p.add_argument("--prompt", help="answer this one question and exit")
    p.add_argument(
        "--conv-mode", choices=sorted(conv_templates), help="conversation template (default: from the model)"
    )
    p.add_argument("--image-process-mode", choices=PROCESS_MODES, default="Default")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float32 on CPU, bfloat16 on CUDA")
    return p.parse_args(argv)


def answer(loaded, conv, params: GenerationParams, out=sys.stdout) -> str:
    """Stream one assistant turn to `out` and record it in `conv`."""
    conv.append_message(conv.roles[1], None)
    text = ""
    for delta in stream_generate(loaded, conv.get_prompt(), conv.get_images(return_pil=True), params):
        new = delta.text.lstrip()  # llava_v0 answers start with a space after "Assistant:"
        out.write(new[len(text) :])
        out.flush()
        text = new
    out.write("\n")
    text = text.strip()
    conv.update_last_message(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        image = load_image(args.image_file) if args.image_file else None
        loaded = load_pretrained(args.model_path, device=args.device, dtype=args.dtype)
        name = model_name_from_path(args.model_path)
        template = args.conv_mode or loaded.template or template_for_model(name)
        conv = conv_templates[template].copy()
        params = GenerationParams(
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            stop=(conv.stop_str,),
            seed=args.seed,
        )
        first = True
        while True:
            if args.prompt is not None:
                text = args.prompt
            else:
                try:
                    text = input(f"{conv.roles[0]}: ")
                except (EOFError, KeyboardInterrupt):
                    print()
                    return 0
                if not text.strip():
                    return 0
            message = (text, image, args.image_process_mode) if first and image is not None else text
            conv.append_message(conv.roles[0], message)
            first = False
            if args.prompt is None:
                print(f"{conv.roles[1]}: ", end="", flush=True)
            answer(loaded, conv, params)
            if args.prompt is not None:
                return 0
    except LlavaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
