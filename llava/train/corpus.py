"""The text corpus of the world: what the tokenizer and the language model are pre-trained on.

Text only, from symbolic scenes that are never drawn: captions, the teacher's conversations,
descriptions and reasoning as `llava_v0` chats, and ScienceQA-style problems in QCM -> LEA form. This is
the stand-in for the general text a real LLM (Vicuna) was trained on before it ever saw a picture.
"""

from __future__ import annotations

import random

from llava.conversation import conv_templates
from llava.data import teacher as rules
from llava.data.scienceqa import to_instruct
from llava.data.sqa_world import make_problems
from llava.data.world import sample_scene, scene_context
from llava.model.tiny import DEFAULT_CORPUS

IMAGE_PREFIX = "<image>\n"


def chat_text(conversations: list[dict], template: str = "llava_v0", keep_image: bool = False) -> str:
    """A LLaVA-Instruct `conversations` list as the template's full prompt string."""
    conv = conv_templates[template].copy()
    for turn in conversations:
        role = conv.roles[0] if turn["from"] == "human" else conv.roles[1]
        value = turn["value"] if keep_image else turn["value"].replace(IMAGE_PREFIX, "").replace("<image>", "")
        conv.append_message(role, value)
    return conv.get_prompt()


def build_corpus(n_scenes: int, n_problems: int, seed: int) -> list[str]:
    """Captions, chats of the three response types, and ScienceQA chats; deterministic in `seed`."""
    rng = random.Random(seed)
    texts = list(DEFAULT_CORPUS)
    kinds = ("conversation", "detail", "complex_reasoning", "brief")
    for k in range(n_scenes):
        context = scene_context(sample_scene(rng))
        texts.append(" ".join(context.captions))
        qas = rules.teach(context, kinds[k % len(kinds)], rng)
        texts.append(chat_text(rules.to_record(str(k), None, qas)["conversations"]))
    problems, _ = make_problems(rng, n_problems, "pretrain")
    texts += [chat_text(to_instruct(pid, p)["conversations"]) for pid, p in problems.items()]
    return texts
