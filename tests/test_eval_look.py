"""The attention probe of `python -m llava.eval look`: shares, positions and the CLI, on the tiny checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from llava.eval.__main__ import main as eval_main
from llava.eval.look import LOOKUPS, _first_end_after, count_look, count_markdown, look, markdown


def test_key_word_position():
    ids = torch.tensor([5, 9, 9, 7, 8, 3, 7, 8])
    assert _first_end_after(ids, [7, 8], 0) == 4
    assert _first_end_after(ids, [7, 8], 5) == 7
    assert _first_end_after(ids, [9], 2) == 2
    with pytest.raises(ValueError):
        _first_end_after(ids, [8, 7], 0)


@pytest.mark.parametrize("key", sorted(LOOKUPS))
def test_shares_are_parts_of_the_image_share(tiny_loaded, key):
    before = tiny_loaded.model.config._attn_implementation
    result = look(tiny_loaded, 8, key)
    assert tiny_loaded.model.config._attn_implementation == before  # eager only while probing
    text = tiny_loaded.model.config.text_config
    assert 0 < result.pictures <= 8
    assert 0.0 <= result.next_token_right <= 1.0
    for on_image, on_object in (
        (result.from_word_image, result.from_word_object),
        (result.from_answer_image, result.from_answer_object),
    ):
        assert on_image.shape == (text.num_hidden_layers, text.num_attention_heads)
        assert bool((on_object >= 0).all()) and bool((on_object <= on_image + 1e-6).all())
        assert bool((on_image <= 1 + 1e-6).all()) and float(on_image.sum()) > 0
    layer, head, on_object, on_image = result.best()
    assert on_object <= on_image + 1e-6
    assert f"| {layer}.{head} |" in markdown([result])


def test_count_probe_reads_the_counting_heads_look(tiny_loaded):
    before = tiny_loaded.model.config._attn_implementation
    result = count_look(tiny_loaded, 12, head=(1, 3), seed=5)
    assert tiny_loaded.model.config._attn_implementation == before
    assert sum(row["pictures"] for row in result.by_objects.values()) == 12
    assert set(result.by_objects) <= {1, 2, 3, 4}
    for row in result.by_objects.values():
        assert 0.0 <= row["next_token_right"] <= 1.0 and row["implied"] > 0 and row["implied_sd"] >= 0
    objects = sum(k * row["pictures"] for k, row in result.by_objects.items())
    assert sum(row["objects"] for row in result.by_patches.values()) == objects  # every object in one band
    assert set(result.by_patches) <= {"0", "1", "2", "3", "4", "5", "6+"}
    # an object's patches are part of the image: its look over the first token's is at most the largest implied
    # count (the whole image's over the first token's) of the pictures
    largest = max(row["implied"] + 4 * row["implied_sd"] for row in result.by_objects.values())
    assert all(0 <= row["share"] <= largest for row in result.by_patches.values())
    table = count_markdown(result)
    assert "head 1.3: implied count" in table and table.count("\n|") >= 2 + len(result.by_objects)
    data = json.loads(json.dumps(result.to_json()))
    assert data["head"] == [1, 3] and data["by_objects"] == {str(k): v for k, v in result.by_objects.items()}
    with pytest.raises(ValueError, match="no head"):
        count_look(tiny_loaded, 1, head=(0, 4))


def test_unknown_lookup(tiny_loaded):
    with pytest.raises(ValueError, match="unknown look-up"):
        look(tiny_loaded, 2, "size")


def test_cli(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "look.json"
    assert eval_main(["look", "--model", str(tiny_ckpt), "--pictures", "4", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "shape-keyed" in printed and "color-keyed" in printed
    assert "no counting head (0, 4)" in printed  # the tiny model has 4 heads a layer
    data = json.loads(out.read_text())
    assert set(data) == set(LOOKUPS)
    assert data["shape"]["best_head"]["object"] <= data["shape"]["best_head"]["image"] + 1e-6
