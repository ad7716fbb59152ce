"""Every shipped recipe parses, validates and dry-runs on CPU (the SLURM launcher's dry run:
tests/integration/test_train_entry_point.py)."""

import re
from pathlib import Path

import pytest

from megatron_endprompt.train import main
from megatron_endprompt.training.config import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples").glob("*.yaml"))
WORLD_SIZE = {"tiny_cpu.yaml": 1}
"""Ranks each recipe is written for (default: one node of 8 GPUs)."""


def test_there_are_recipes() -> None:
    names = {p.name for p in RECIPES}
    assert {"tiny_cpu.yaml", "llama3_8b_endprompt_64k.yaml", "llama3_8b_etpose_64k.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_dry_runs(recipe: Path, capsys) -> None:
    world = WORLD_SIZE.get(recipe.name, 8)
    cfg = load_config(recipe)
    cfg.validate(world_size=world, check_environment=False)
    assert cfg.train_steps >= 1
    rc = main(["--config", str(recipe), "--dry-run", "--dry-run-world-size", str(world)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "tokens/step" in out.out and "FLOP/token" in out.out
    assert "memory per GPU" in out.out


def test_paper_recipe_numbers() -> None:
    """The 8x H100 EndPrompt recipe is the paper's: P=8K, T=64K via PI x8, batch 64, lr 2e-5 constant, 20 warmup."""
    cfg = load_config(ROOT / "examples/llama3_8b_endprompt_64k.yaml")
    cfg.validate(world_size=8, check_environment=False)
    model = cfg.model_config()
    assert (cfg.data.seq_length, model.max_position_embeddings) == (8192, 65536)
    assert (model.rope_scaling.type, model.rope_scaling.factor) == ("linear", 8.0)
    assert (cfg.data.global_batch_size, cfg.optimizer.lr, cfg.optimizer.warmup_steps) == (64, 2e-5, 20)
    assert cfg.optimizer.lr_schedule == "constant" and cfg.data.cue_loss_weight == 0.1
    full = load_config(ROOT / "examples/llama3_8b_fulllength_64k_cp.yaml")
    full.validate(world_size=8, check_environment=False)
    assert full.tokens_per_step == cfg.tokens_per_step and full.parallel.context_parallel > 1


def test_recipes_and_launchers_have_no_absolute_paths() -> None:
    for path in [*RECIPES, *(ROOT / "examples").glob("*.sh")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0] if path.suffix == ".yaml" else line
            if line.startswith("#!"):
                continue
            assert not re.search(r"(^|[\s:=\[\"'])/(home|work|data|scratch|mnt|root|gpfs|lustre)\b", code), (
                f"{path.name}:{number}: absolute path: {line}"
            )
