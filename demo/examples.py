"""The Examples tab: a gallery of pictures + prompts from `examples/examples.json` (made by build_examples.py).

Clicking an example fills the picture and the text of the message box in the tab the user came from (Chat or
Side by side), picks the example's model when a worker serves it, and switches to that tab.
API endpoint: `/use_example` (the example's index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gradio as gr
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from demo.chat import ChatTab
from demo.side_by_side import SideBySideTab
from demo.turn import Services
from demo.worker_client import ServiceError

DEFAULT_EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "examples.json"
CHAT_TAB, SIDE_BY_SIDE_TAB, EXAMPLES_TAB = "chat", "side_by_side", "examples"


class ExamplesError(Exception):
    """The examples file is missing or malformed; the message names the file and the problem."""


class Example(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    image: str  # path relative to the examples file
    prompt: str = Field(min_length=1)
    model: str = Field(min_length=1)  # the model the example is meant for
    kind: Literal["chat", "scienceqa"]
    answer: str = ""  # a reference answer, for people and evaluations; never shown before asking

    @property
    def caption(self) -> str:
        """The prompt on one line for the gallery; a QCM prompt shows its question and options."""
        lines = [line.removeprefix("Question: ").removeprefix("Options: ") for line in self.prompt.splitlines()]
        return " ".join(line for line in lines if line.strip() not in ("", "Context: N/A"))


KIND_HINTS = {"chat": ("chat",), "scienceqa": ("sqa", "scienceqa")}  # words in a model name that fit a kind


def fitting_model(example: Example, served: list[str]) -> str | None:
    """The example's own model if served, else a served model whose name fits its kind (e.g. '...-sqa')."""
    if example.model in served:
        return example.model
    hints = KIND_HINTS[example.kind]
    return next((m for m in served if any(h in m.lower() for h in hints)), None)


class ExampleFile(BaseModel):
    examples: list[Example] = Field(min_length=1)


def load_examples(path: str | Path = DEFAULT_EXAMPLES) -> list[Example]:
    """Read and check the examples file; image paths come back absolute and are known to exist."""
    path = Path(path)
    try:
        doc = ExampleFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as e:
        raise ExamplesError(f"{path}: not found (run `python examples/build_examples.py` to make it)") from e
    except json.JSONDecodeError as e:
        raise ExamplesError(f"{path}: not valid JSON ({e})") from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ExamplesError(f"{path}: {problems}") from e
    examples = []
    for ex in doc.examples:
        image = (path.parent / ex.image).resolve()
        if not image.is_file():
            raise ExamplesError(f"{path}: example {ex.id!r} names {ex.image}, which does not exist")
        examples.append(ex.model_copy(update={"image": str(image)}))
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise ExamplesError(f"{path}: example ids must be unique, got {ids}")
    return examples


@dataclass
class ExamplesTab:
    services: Services
    examples: list[Example]
    dataset: gr.Dataset

    @classmethod
    def build(cls, services: Services, examples: list[Example]) -> ExamplesTab:
        gr.Markdown(
            "Pictures of the synthetic shape world with questions the shipped models were trained on. "
            "Click one to put it into the message box of the tab you came from (Chat, unless you were last in "
            "Side by side), then press Send. ScienceQA examples are multiple-choice questions for the "
            "ScienceQA model.",
            elem_classes=["hint"],
        )
        dataset = gr.Dataset(
            components=[gr.Image(type="filepath", render=False), gr.Textbox(render=False),
                        gr.Textbox(render=False)],
            headers=["Picture", "Prompt", "Meant for"],
            samples=[[ex.image, ex.caption, ex.model] for ex in examples],
            type="index",
            samples_per_page=len(examples),
            label="Examples",
            show_label=False,
            elem_id="examples-gallery",
        )  # fmt: skip
        return cls(services, examples, dataset)

    def wire(self, tabs: gr.Tabs, active: gr.State, chat: ChatTab, sbs: SideBySideTab) -> None:
        self.dataset.click(
            self._use,
            [self.dataset, active],
            [tabs, chat.message, chat.model, sbs.message, sbs.models[0]],
            api_name="use_example",
            concurrency_limit=None,
            show_progress="hidden",
        )

    async def _use(self, index: int | None, active: str):
        if index is None or not 0 <= int(index) < len(self.examples):
            raise gr.Error(f"There is no example number {index}.")
        ex = self.examples[int(index)]
        message = {"text": ex.prompt, "files": [ex.image]}
        try:
            served = await self.services.client.list_models(refresh=False)
        except ServiceError as e:
            gr.Warning(str(e))
            served = []
        fitting = fitting_model(ex, served)
        if fitting is not None:
            model = gr.Dropdown(choices=served, value=fitting)
        else:
            model = gr.skip()
            gr.Warning(f"This example is meant for {ex.model}, which no worker serves right now; "
                       "the model you picked is kept.")  # fmt: skip
        if active == SIDE_BY_SIDE_TAB:
            return gr.Tabs(selected=SIDE_BY_SIDE_TAB), gr.skip(), gr.skip(), message, model
        return gr.Tabs(selected=CHAT_TAB), message, model, gr.skip(), gr.skip()
