"""`--checkpoint.init_from` takes the architecture from the checkpoint unless one is given on the command line
(the CLI's exit 2: tests/integration/test_train_entry_point.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_endprompt.model.config import get_preset
from megatron_endprompt.training.config import load_config
from megatron_endprompt.training.validation import ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "examples/tiny_cpu.yaml")


@pytest.fixture
def converted(tmp_path) -> Path:
    """A dir like hf-to-megatron's output, holding a model the `tiny` preset does not describe."""
    model = get_preset("tiny").replace(num_layers=3, vocab_size=1024, rope_theta=1e5)
    (tmp_path / "endprompt_model.json").write_text(json.dumps(model.to_dict()))
    return tmp_path


def test_recipe_preset_gives_way_to_the_checkpoint_architecture(converted) -> None:
    cfg = load_config(
        TINY, ["--checkpoint.init_from", str(converted), "--model.max_position_embeddings", "4096"]
    )
    model = cfg.model_config()
    assert (model.num_layers, model.vocab_size, model.rope_theta) == (3, 1024, 1e5)
    assert model.max_position_embeddings == 4096  # model fields still apply on top
    assert cfg.model.preset is None
    cfg.validate(1)


def test_recipe_preset_kept_without_init_from_or_without_its_json(tmp_path) -> None:
    assert load_config(TINY, []).model.preset == "tiny"
    assert load_config(TINY, ["--checkpoint.init_from", str(tmp_path)]).model.preset == "tiny"


def test_explicit_preset_that_disagrees_names_the_flag(converted) -> None:
    cfg = load_config(TINY, ["--checkpoint.init_from", str(converted), "--model.preset", "tiny"])
    assert cfg.model.preset == "tiny"
    with pytest.raises(ConfigError) as err:
        cfg.validate(1)
    text = str(err.value)
    assert "--model.preset tiny: num_layers = 2" in text and "--model.preset tiny: vocab_size = 512" in text
    assert "drop --model.preset" in text


def test_explicit_model_field_that_disagrees_names_that_field(converted) -> None:
    cfg = load_config(TINY, ["--checkpoint.init_from", str(converted), "--model.num_layers", "4"])
    with pytest.raises(
        ConfigError, match=r"--model\.num_layers: num_layers = 4, but --checkpoint\.init_from"
    ):
        cfg.validate(1)


def test_recipe_that_sets_both_keeps_its_preset_and_is_checked(converted, tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: {TINY}\ncheckpoint:\n  init_from: {converted}\n")
    cfg = load_config(str(recipe), [])
    assert cfg.model.preset == "tiny"
    cfg.validate(1, check_environment=False)  # a dry run elsewhere need not have the checkpoint
    with pytest.raises(
        ConfigError, match=r"--model\.preset tiny: num_layers = 2, but --checkpoint\.init_from"
    ):
        cfg.validate(1)
