"""The text corpus of the world: what the tokenizer and the language model are pre-trained on.

Text only, from symbolic scenes that are never drawn: captions, the teacher's conversations,
descriptions and reasoning as `llava_v0` chats, ScienceQA-style problems in QCM -> LEA form, and option
look-ups ("Which option is a red circle?" -> "... The answer is B."). This is the stand-in for the general
text a real LLM (Vicuna) was trained on before it ever saw a picture.

Every chat about a scene reads the scene's full caption where the picture will later be, so the LM learns
to answer from what its context says: reading comprehension, a skill Vicuna brings. Without it the chats
taught the LM to answer questions about an unseen picture by guessing, and stage 2 had to unlearn that;
its answers were fluent and named colours and shapes of the picture, but bound them wrongly (colour and
yes/no questions near chance).

The look-ups are there because reading a letter off a list of options is a skill Vicuna brings and our
small LM does not: trained on the problems alone it learned the explanations and then always answered the
same letter. The look-ups name no picture and ask nothing about one.
"""

from __future__ import annotations

import random

from llava.conversation import conv_templates
from llava.data import teacher as rules
from llava.data.scienceqa import LETTERS, options_text, to_instruct
from llava.data.sqa_world import make_problems
from llava.data.world import NUMBER_WORDS, full_caption, sample_scene, scene_context
from llava.model.tiny import COLORS, DEFAULT_CORPUS, SHAPES, SIZES

IMAGE_PREFIX = "<image>\n"


def chat_text(
    conversations: list[dict], template: str = "llava_v0", keep_image: bool = False, image_text: str = ""
) -> str:
    """A LLaVA-Instruct `conversations` list as the template's full prompt string; the picture's slot holds
    `image_text` (a caption, say) unless `keep_image`."""
    conv = conv_templates[template].copy()
    stand_in = f"{image_text}\n" if image_text else ""
    for turn in conversations:
        role = conv.roles[0] if turn["from"] == "human" else conv.roles[1]
        value = turn["value"]
        if not keep_image:
            value = value.replace(IMAGE_PREFIX, stand_in).replace("<image>", image_text)
        conv.append_message(role, value)
    return conv.get_prompt()


LOOKUP_WORDS = (
    [f"a {c} {s}" for c in COLORS for s in SHAPES]
    + [f"a {z} {s}" for z in SIZES for s in SHAPES]
    + list(COLORS) + list(SHAPES) + list(SIZES) + list(NUMBER_WORDS)
)  # fmt: skip
LOOKUP_QUESTIONS = ("Which option is {}?", "Which option says {}?", "Find {} in the options.", "Pick {}.")


def lookup_record(rng: random.Random, pid: str = "lookup") -> dict:
    """One option look-up as a text-only LLaVA-Instruct record in the QCM -> answer form."""
    n = rng.randint(2, 4)
    options = rng.sample(LOOKUP_WORDS, n)
    j = rng.randrange(n)
    question = rng.choice(LOOKUP_QUESTIONS).format(options[j])
    human = f"Question: {question}\nContext: N/A\nOptions: {options_text(options)}"
    answer = f"It is {options[j]}. The answer is {LETTERS[j]}."
    return {"id": pid, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}


def build_corpus(n_scenes: int, n_problems: int, seed: int, n_lookups: int = 0) -> list[str]:
    """Captions, chats of the three response types, ScienceQA chats and option look-ups; deterministic in
    `seed`."""
    rng = random.Random(seed)
    texts = list(DEFAULT_CORPUS)
    kinds = ("conversation", "detail", "complex_reasoning", "brief")
    for k in range(n_scenes):
        scene = sample_scene(rng)
        context = scene_context(scene)
        texts.append(" ".join(context.captions))
        qas = rules.teach(context, kinds[k % len(kinds)], rng)
        record = rules.to_record(str(k), "scene", qas)  # with a picture: `<image>` leads, the caption stands in
        texts.append(chat_text(record["conversations"], image_text=full_caption(scene)))
    problems, scenes = make_problems(rng, n_problems, "pretrain")
    texts += [
        chat_text(to_instruct(pid, p)["conversations"], image_text=full_caption(scenes[pid]) if pid in scenes else "")
        for pid, p in problems.items()
    ]
    texts += [chat_text(lookup_record(rng)["conversations"]) for _ in range(n_lookups)]
    return texts
