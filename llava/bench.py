"""Generation speed of a checkpoint through `llava.generation`, the path the worker and the CLI use.

    python -m llava.bench --model checkpoints/llava-shapes-chat [--device auto] [--dtype auto] [--runs 5]
    python -m llava.bench --model M --profile      # also where the time of one answer goes, op by op
    python -m llava.bench --no-cudnn-attention     # with PyTorch's cuDNN attention kernels turned off (CUDA)

Prints time to first token, decoding ms per token and tokens/s for one picture and one question, greedy, after
a warm-up answer; and the same decoding step split into the model's forward alone and everything around it
(sampling, detokenizing, stop strings). Then the decoding speed of the first and the second answer on a thread
made for them: on CUDA a new thread's first answer decoded ~12x slower (why the worker keeps its threads); the
median and slowest step tell whether every step or one step paid.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llava.model import DTYPES  # noqa: E402

QUESTION = "Describe the image in detail."


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_ms(loaded, inputs: dict, steps: int) -> float:
    """Milliseconds per decoding forward (one token against the cache), the model alone."""
    import torch

    from llava.generation import cache_argument

    model = loaded.model
    device = str(model.device)
    cache = cache_argument(model)
    with torch.inference_mode():
        out = model(**inputs, use_cache=True)
        past = getattr(out, cache)
        token = torch.argmax(out.logits[0, -1]).view(1, 1)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, use_cache=True, **{cache: past})
            past = getattr(out, cache)
            token = torch.argmax(out.logits[0, -1]).view(1, 1)
        _sync(device)
    return (time.perf_counter() - start) * 1000 / steps


def decode_ms_per_token(answer) -> float:
    t = answer.timings
    return (t["total_s"] - t["first_token_s"]) * 1000 / max(1, answer.output_tokens - 1)


def on_a_new_thread(loaded, prompt: str, images: list, params) -> list[tuple[float, float, float]]:
    """Two answers in a row on a thread started for them (the process is warm): for each, decoding ms per token
    and the median and the slowest gap between two streamed pieces, which tell a cost paid at every step from
    one paid once."""
    import threading

    from llava.generation import stream_generate

    got: list[tuple[float, float, float]] = []

    def answer() -> None:
        stamps, last = [], None
        for last in stream_generate(loaded, prompt, images, params):  # noqa: B007
            stamps.append(time.perf_counter())
        gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:-1], strict=False)] or [float("nan")]
        got.append((decode_ms_per_token(last), statistics.median(gaps), max(gaps)))

    thread = threading.Thread(target=lambda: [answer() for _ in range(2)])
    thread.start()
    thread.join()
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/llava-shapes-chat")
    p.add_argument("--image", default="examples/images/shapes.png")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--profile", action="store_true", help="print the ops that took the time of one answer")
    p.add_argument("--no-cudnn-attention", action="store_true", help="turn off the cuDNN scaled-dot-product kernels")
    args = p.parse_args(argv)

    import torch

    from llava.conversation import conv_templates, template_for_model
    from llava.errors import LlavaError
    from llava.generation import GenerationParams, generate, prepare_inputs
    from llava.images import load_image
    from llava.model.loader import load_pretrained, model_name_from_path

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        loaded = load_pretrained(args.model, device=args.device, dtype=args.dtype)
        image = load_image(args.image)
    except LlavaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    conv = conv_templates[loaded.template or template_for_model(model_name_from_path(args.model))].copy()
    conv.append_message(conv.roles[0], "<image>\n" + args.question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    params = GenerationParams(temperature=0, max_new_tokens=args.max_new_tokens, stop=(conv.stop_str,))
    device = str(loaded.model.device)

    generate(loaded, prompt, [image], params)  # warm-up: allocator, kernels, caches
    ttft, per_token, tokens = [], [], 0
    for _ in range(args.runs):
        out = generate(loaded, prompt, [image], params)
        ttft.append(out.timings["first_token_s"] * 1000)
        if out.output_tokens > 1:
            per_token.append(decode_ms_per_token(out))
        tokens = out.output_tokens
    inputs = prepare_inputs(loaded, prompt, [image])
    model_ms = forward_ms(loaded, inputs, max(tokens, 16))
    decode_ms = statistics.median(per_token) if per_token else float("nan")
    print(
        f"{args.model} on {device} ({loaded.model.dtype}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads; {inputs['input_ids'].shape[1]} prompt tokens, {tokens} generated"
    )
    print(f"time to first token   {statistics.median(ttft):8.1f} ms  (median of {args.runs})")
    print(f"decoding              {decode_ms:8.2f} ms/token  = {1000 / decode_ms:6.1f} tokens/s")
    print(f"  model forward alone {model_ms:8.2f} ms/token")
    print(f"  around it           {decode_ms - model_ms:8.2f} ms/token  (sampling, detokenizing, stop strings)")
    for i, (per, median, slowest) in enumerate(on_a_new_thread(loaded, prompt, [image], params), 1):
        print(
            f"a new thread, answer {i}: {per:6.2f} ms/token; steps: median {median:6.2f} ms, slowest {slowest:7.2f} ms"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=activities) as prof:
            generate(loaded, prompt, [image], params)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        if device.startswith("cuda"):
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
