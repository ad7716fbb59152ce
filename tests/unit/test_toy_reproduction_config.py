"""The toy reproduction's shipped settings parse, every variant maps to a valid position scheme, and the token
budget is equal across variants while FLOPs reflect the physical length."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "toy_reproduction" / "run.py"


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("toy_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_shipped_config_parses_and_schemes_are_valid(toy) -> None:
    cfg = toy.load_toy_config(SCRIPT.with_name("config.yaml"), [])
    assert set(cfg.variants) == set(toy.VARIANTS)
    schemes = toy.schemes(cfg)
    for variant in cfg.variants:
        if variant != "pi_only":
            scheme, cues = schemes[variant]
            scheme.validate(max_cue_length=16 if cues else None)
            assert scheme.seq_length == toy.physical_length(cfg, variant)
    assert schemes["full_length"][0].seq_length == cfg.target_length == 8 * cfg.base_length


def test_equal_tokens_more_flops_for_full_length(toy) -> None:
    cfg = toy.load_toy_config(None, ["extend_steps=10"])
    short, full = toy.training_flops(cfg, "endprompt"), toy.training_flops(cfg, "full_length")
    assert toy.training_flops(cfg, "pi_only") == 0.0
    assert full > short > 0  # same tokens, but attention over T instead of P0
    batch = {
        v: cfg.extend_tokens_per_step // toy.physical_length(cfg, v) for v in ("endprompt", "full_length")
    }
    assert batch == {"endprompt": 16, "full_length": 2}


def test_bad_settings_name_the_key(toy) -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        toy.load_toy_config(None, ["no_such_key=1"])
    with pytest.raises(ValueError, match="base_curriculum"):
        toy.load_toy_config(None, ["base_curriculum=[64,128]", "base_steps=[1,1]"])
    with pytest.raises(ValueError, match="variants"):
        toy.load_toy_config(None, ["variants=[magic]"])
