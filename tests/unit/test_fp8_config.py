"""FP8 settings of the recipe schema: parsing, the one validation pass, megatron-core's TransformerConfig, dry run.

megatron-core's own TransformerConfig (0.16.1, built on CPU: its FP8 checks need no Transformer Engine) is the
reference: what our validation accepts it must accept, what it refuses we must refuse first, naming our flag.
"""

import typing
from pathlib import Path

import pytest
import yaml

from megatron_endprompt.training import dry_run
from megatron_endprompt.training.config import PrecisionSection, TrainConfig, load_config
from megatron_endprompt.training.engine_build import config_overrides
from megatron_endprompt.training.validation import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FP8_RECIPE = ROOT / "examples" / "llama3_8b_endprompt_64k_fp8.yaml"
BASE = ["--model.preset", "tiny", "--data.mock", "--training.train_steps", "4", "--data.seq_length", "64"]
"""The tiny preset has 2 layers."""


def cfg_with(*overrides: str) -> TrainConfig:
    return load_config(None, [*BASE, *overrides])


def validation_errors(cfg: TrainConfig, world_size: int = 1) -> str:
    """'' when valid, else the ConfigError text (Transformer Engine being absent here is not checked)."""
    try:
        cfg.validate(world_size=world_size, check_environment=False)
    except ConfigError as exc:
        return str(exc)
    return ""


def transformer_config(cfg: TrainConfig):
    """megatron-core's TransformerConfig with the engine's overrides (raises what megatron's checks raise)."""
    from megatron_endprompt.model.gpt import to_transformer_config

    return to_transformer_config(
        cfg.model_config(), pp=cfg.parallel.pipeline_parallel, bf16=True, **config_overrides(cfg)
    )


def test_offered_recipes_are_megatron_core_recipes() -> None:
    from megatron.core.enums import Fp8Recipe

    ours = set(typing.get_args(typing.get_type_hints(PrecisionSection)["fp8_recipe"]))
    assert ours == {r.value for r in Fp8Recipe} - {"custom"}  # custom needs a quantizer factory: not offered
    with pytest.raises(ValueError, match="--precision.fp8_recipe: 'custom' is not one of"):
        cfg_with("--precision.fp8", "hybrid", "--precision.fp8_recipe", "custom")
    with pytest.raises(ValueError, match="--precision.fp8_amax_compute_algo: 'mean' is not one of"):
        cfg_with("--precision.fp8", "hybrid", "--precision.fp8_amax_compute_algo", "mean")


def test_defaults_are_nvidias_llama3_fp8_setting() -> None:
    """Megatron-LM examples/llama/train_llama3_8b_h100_fp8.sh and NeMo bf16_with_fp8_mixed: delayed scaling,
    amax history 1024, max; megatron's own defaults (history 1, most_recent) differ, so these are ours."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    pr = PrecisionSection()
    assert (pr.fp8_recipe, pr.fp8_amax_history_len, pr.fp8_amax_compute_algo, pr.fp8_margin) == (
        "delayed",
        1024,
        "max",
        0,
    )
    megatron = TransformerConfig.__dataclass_fields__
    assert (megatron["fp8_amax_history_len"].default, megatron["fp8_amax_compute_algo"].default) == (
        1,
        "most_recent",
    )


INVALID = [
    (["--precision.fp8_amax_history_len", "16"], "--precision.fp8_amax_history_len needs --precision.fp8"),
    (["--precision.fp8_recipe", "tensorwise"], "--precision.fp8_recipe needs --precision.fp8"),
    (
        ["--precision.fp8", "hybrid", "--precision.fp8_amax_history_len", "0"],
        "--precision.fp8_amax_history_len must be >= 1, got 0",
    ),
    (["--precision.fp8", "hybrid", "--precision.fp8_margin", "-1"], "--precision.fp8_margin must be >= 0"),
    (
        [
            "--precision.fp8",
            "e4m3",
            "--precision.fp8_recipe",
            "tensorwise",
            "--precision.fp8_amax_history_len",
            "16",
        ],
        "--precision.fp8_amax_history_len only applies to --precision.fp8_recipe delayed",
    ),
    (
        ["--precision.fp8", "hybrid", "--precision.fp8_bf16_layers_at_start", "1"],
        "need --precision.fp8_recipe tensorwise, blockwise or mxfp8",
    ),
    (
        [
            "--precision.fp8",
            "hybrid",
            "--precision.fp8_recipe",
            "tensorwise",
            "--precision.fp8_bf16_layers_at_end",
            "3",
        ],
        "--precision.fp8_bf16_layers_at_end must be in [0, model.num_layers / --parallel.pipeline_parallel = 2]",
    ),
    (
        [
            "--precision.fp8",
            "hybrid",
            "--precision.fp8_recipe",
            "mxfp8",
            "--precision.fp8_bf16_layers_at_start",
            "-1",
        ],
        "--precision.fp8_bf16_layers_at_start must be in [0,",
    ),
    (
        [
            "--precision.fp8",
            "hybrid",
            "--precision.fp8_recipe",
            "tensorwise",
            "--precision.fp8_bf16_layers_at_start",
            "1",
            "--precision.fp8_bf16_layers_at_end",
            "1",
        ],
        "must stay below model.num_layers (2)",
    ),
]


@pytest.mark.parametrize("args, message", INVALID, ids=[m[:45] for _, m in INVALID])
def test_invalid_fp8_settings_name_the_flag(args: list[str], message: str) -> None:
    assert message in validation_errors(cfg_with(*args))


# (recipe, bf16 layers at start, at end, pipeline stages) on the 2-layer tiny model
LAYER_CASES = [
    ("delayed", 0, 0, 1),
    ("delayed", 1, 0, 1),
    ("tensorwise", 1, 0, 1),
    ("tensorwise", 0, 1, 1),
    ("blockwise", 2, 0, 1),
    ("tensorwise", 3, 0, 1),
    ("mxfp8", 0, 1, 2),
    ("tensorwise", 2, 0, 2),
]


@pytest.mark.parametrize("recipe, start, end, pp", LAYER_CASES)
def test_validation_refuses_what_megatron_core_refuses(recipe: str, start: int, end: int, pp: int) -> None:
    cfg = cfg_with(
        "--precision.fp8",
        "hybrid",
        "--precision.fp8_recipe",
        recipe,
        "--precision.fp8_bf16_layers_at_start",
        str(start),
        "--precision.fp8_bf16_layers_at_end",
        str(end),
        "--parallel.pipeline_parallel",
        str(pp),
    )
    ours = validation_errors(cfg, world_size=pp)
    try:
        transformer_config(cfg)
        megatron_refuses = False
    except ValueError:
        megatron_refuses = True
    if megatron_refuses:
        assert "--precision.fp8_bf16_layers_at" in ours
    else:  # ours is stricter only where no layer would be left in FP8
        assert ours == "" or (start + end >= 2 and "must stay below model.num_layers" in ours)


def test_fp8_settings_land_in_megatrons_transformer_config() -> None:
    cfg = cfg_with(
        "--precision.fp8",
        "e4m3",
        "--precision.fp8_recipe",
        "tensorwise",
        "--precision.fp8_bf16_layers_at_end",
        "1",
    )
    assert validation_errors(cfg) == ""
    tc = transformer_config(cfg)
    assert (tc.fp8, tc.fp8_recipe) == ("e4m3", "tensorwise")
    assert (tc.first_last_layers_bf16, tc.num_layers_at_start_in_bf16, tc.num_layers_at_end_in_bf16) == (
        True,
        0,
        1,
    )
    delayed = transformer_config(
        cfg_with(
            "--precision.fp8",
            "hybrid",
            "--precision.fp8_amax_history_len",
            "16",
            "--precision.fp8_margin",
            "1",
        )
    )
    assert (delayed.fp8_recipe, delayed.fp8_amax_history_len, delayed.fp8_amax_compute_algo) == (
        "delayed",
        16,
        "max",
    )
    assert delayed.fp8_margin == 1 and delayed.first_last_layers_bf16 is False
    assert transformer_config(cfg_with()).fp8 is None  # without --precision.fp8 nothing FP8 is passed


def test_fp8_recipe_sets_every_fp8_field_explicitly_and_validates() -> None:
    precision = yaml.safe_load(FP8_RECIPE.read_text())["precision"]
    fp8_fields = {f for f in PrecisionSection.__dataclass_fields__ if f.startswith("fp8")}
    assert fp8_fields <= set(precision), f"{FP8_RECIPE.name} leaves {fp8_fields - set(precision)} to defaults"
    cfg = load_config(FP8_RECIPE)
    assert validation_errors(cfg, world_size=8) == ""
    assert (cfg.precision.fp8, cfg.precision.fp8_recipe, cfg.precision.fp8_amax_history_len) == (
        "hybrid",
        "delayed",
        1024,
    )


def test_dry_run_shows_the_fp8_settings_the_recipe_reads() -> None:
    cfg = load_config(FP8_RECIPE)
    cfg.validate(world_size=8, check_environment=False)
    text = dry_run.format_report(dry_run.report(cfg))
    assert (
        "+ fp8 hybrid (recipe delayed, amax history 1024 (max), margin 0, bf16 layers: first 0, last 0)"
        in text
    )
    current = cfg_with(
        "--precision.fp8",
        "hybrid",
        "--precision.fp8_recipe",
        "tensorwise",
        "--precision.fp8_bf16_layers_at_start",
        "1",
    )
    current.validate(world_size=1, check_environment=False)
    report = dry_run.report(current)
    assert "fp8_amax_history_len" not in report["precision"]  # tensorwise does not read it
    assert "+ fp8 hybrid (recipe tensorwise, bf16 layers: first 1, last 0)" in dry_run.format_report(report)
    plain = cfg_with()
    plain.validate(world_size=1)
    lines = dry_run.format_report(dry_run.report(plain)).splitlines()
    assert [line for line in lines if line.startswith("precision ")] == ["precision bf16; recompute none"]
