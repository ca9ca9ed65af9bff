"""A command-line client, in the manner of the original LLaVA `test_message.py`.

`python -m serve.client --model-name llava-shapes-chat --image examples/images/shapes.png --message "..."`
asks the controller which worker serves the model, then streams the answer from that worker.
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx

from llava.conversation import conv_templates, template_for_model
from llava.errors import LlavaError
from llava.images import PROCESS_MODES, load_image
from serve.protocol import ErrorCode, GetWorkerAddressResponse, ListModelsResponse, ModelDetails, iter_chunks


class ClientError(Exception):
    pass


def pick_worker(http: httpx.Client, controller: str, model: str | None) -> tuple[str, str]:
    """(model name, worker address) from the controller; the first listed model when none is named."""
    models = ListModelsResponse.model_validate(http.post(f"{controller}/list_models").json()).models
    if not model:
        if not models:
            raise ClientError(f"the controller at {controller} has no workers registered")
        model = models[0]
    r = http.post(f"{controller}/get_worker_address", json={"model": model})
    address = GetWorkerAddressResponse.model_validate(r.json()).address
    if not address:
        raise ClientError(f"no worker serves {model!r}; the controller lists {models or 'no models'}")
    return model, address


def build_prompt(template: str, message: str, with_image: bool, process_mode: str, image=None) -> tuple[str, list, str]:
    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], (message, image, process_mode) if with_image else message)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt(), (conv.get_images() if with_image else []), conv.stop_str


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve.client", description=__doc__.splitlines()[0])
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--worker-address", help="skip the controller and talk to this worker")
    p.add_argument("--model-name", help="default: the first model the controller lists")
    p.add_argument("--image", help="picture to send (optional)")
    p.add_argument("--image-process-mode", choices=PROCESS_MODES, default="Default")
    p.add_argument("--message", default="Describe the image in detail.")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the worker")
    args = p.parse_args(argv)
    controller = args.controller_address.rstrip("/")
    start = time.perf_counter()
    try:
        with httpx.Client(timeout=args.timeout) as http:
            if args.worker_address:
                model, address = args.model_name, args.worker_address.rstrip("/")
            else:
                model, address = pick_worker(http, controller, args.model_name)
            details = ModelDetails.model_validate(http.post(f"{address}/model_details").json())
            template = details.conv_template or template_for_model(details.model_name)
            image = load_image(args.image) if args.image else None
            prompt, images, stop = build_prompt(
                template, args.message, image is not None, args.image_process_mode, image
            )
            payload = {
                "model": model or details.model_name,
                "prompt": prompt,
                "images": images,
                "stop": stop,
                "temperature": args.temperature,
                "top_p": args.top_p,
                "max_new_tokens": args.max_new_tokens,
            }
            first = None
            shown = 0
            with http.stream("POST", f"{address}/worker_generate_stream", json=payload) as r:
                for chunk in iter_chunks(r.iter_bytes()):
                    if chunk["error_code"] != ErrorCode.OK:
                        raise ClientError(f"worker error {chunk['error_code']}: {chunk['text']}")
                    first = first or time.perf_counter() - start
                    answer = chunk["text"][len(prompt) :].lstrip()
                    print(answer[shown:], end="", flush=True)
                    shown = len(answer)
            print()
    except (ClientError, LlavaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:
        print(f"error: cannot reach the server: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - start
    print(f"[{model} at {address}] first chunk {first or total:.3f} s, total {total:.3f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
