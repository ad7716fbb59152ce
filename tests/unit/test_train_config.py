"""TrainConfig: recipe + override parsing into typed sections, and the one validation pass naming the flag."""

import json

import pytest

from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.te_choice import te_installed
from megatron_endprompt.training.config import TrainConfig, from_dict, load_config
from megatron_endprompt.training.validation import ConfigError

BASE = ["--model.preset", "tiny", "--data.mock", "--training.train_steps", "4", "--data.seq_length", "64"]


def cfg_with(*overrides: str) -> TrainConfig:
    return load_config(None, [*BASE, *overrides])


def test_override_forms_and_types() -> None:
    cfg = cfg_with(
        "--optimizer.lr=1e-4",  # '=' form; YAML would read 1e-4 as a string, the field type makes it a float
        "--weight_decay",
        "0.1",  # bare key unique to one section
        "--data.micro-batch-size",
        "2",  # dashes
        "--parallel.sequence_parallel",  # bare boolean flag
        "--data.paths",
        "a,b",
        "--data.weights",
        "[0.3, 0.7]",
        "--checkpoint.keep_last",
        "none",
        "--model.rope_scaling.factor",
        "8",
        "--model.max_position_embeddings",
        "4096",
    )
    assert cfg.optimizer.lr == 1e-4 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.weight_decay == 0.1
    assert cfg.data.micro_batch_size == 2 and isinstance(cfg.data.micro_batch_size, int)
    assert cfg.parallel.sequence_parallel is True
    assert cfg.data.paths == ["a", "b"] and cfg.data.weights == [0.3, 0.7]
    assert cfg.checkpoint.keep_last is None
    model = cfg.model_config()
    assert model.max_position_embeddings == 4096
    # rope_scaling is merged key by key onto the preset's block
    assert model.rope_scaling.factor == 8.0 and model.rope_scaling.type == "none"


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--optimizer.lr", "fast"], "--optimizer.lr: expected float"),
        (["--data.global_batch_size", "2.5"], "--data.global_batch_size: expected int"),
        (["--precision.dtype", "fp64"], "--precision.dtype"),
        (["--parallel.sequence_parallel", "maybe"], "--parallel.sequence_parallel"),
        (["--optimizer.lrr", "1"], "did you mean --optimizer.lr"),
        (["--seed", "3"], "--data.seed, --training.seed"),  # ambiguous bare key
        (["--model.hidden", "3"], "--model.hidden"),
        (["--model.rope_scaling.fator", "3"], "--model.rope_scaling.fator"),
        (["--nosuch.section", "1"], "unknown flag --nosuch.section"),
        (["positional"], "unexpected argument"),
    ],
)
def test_bad_values_name_the_flag(args: list[str], flag: str) -> None:
    with pytest.raises(ValueError, match=flag.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, args)


def test_recipe_inheritance_and_cli_precedence(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text(
        "model: {preset: tiny}\noptimizer: {lr: 1.0e-3, warmup_steps: 3}\ndata: {mock: true, seq_length: 32}\n"
        "training: {train_steps: 5}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptimizer: {lr: 2.0e-3}\n")
    cfg = load_config(tmp_path / "child.yaml", ["--optimizer.warmup_steps", "7"])
    assert cfg.optimizer.lr == 2e-3  # child beats base
    assert cfg.optimizer.warmup_steps == 7  # command line beats both
    assert cfg.data.seq_length == 32  # inherited
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ValueError, match="--config"):
        load_config(tmp_path / "missing.yaml")


def test_to_dict_round_trips() -> None:
    cfg = cfg_with(
        "--model.rope_scaling.type", "linear", "--model.rope_scaling.factor", "2", "--optimizer.lr", "5e-4"
    )
    again = from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    assert again.model_config() == cfg.model_config()


def test_model_from_converted_checkpoint_json(tmp_path) -> None:
    model = get_preset("tiny").replace(num_layers=3, rope_theta=5e5)
    (tmp_path / "endprompt_model.json").write_text(json.dumps(model.to_dict()))
    cfg = load_config(
        None, ["--checkpoint.init_from", str(tmp_path), "--model.max_position_embeddings", "2048"]
    )
    resolved = cfg.model_config()
    assert (
        resolved.num_layers == 3 and resolved.rope_theta == 5e5 and resolved.max_position_embeddings == 2048
    )
    with pytest.raises(ValueError, match="endprompt_model.json|--model"):
        load_config(None, ["--checkpoint.init_from", str(tmp_path / "nothing")]).model_config()


def test_valid_config_derives_data_parallel() -> None:
    cfg = cfg_with(
        "--parallel.tensor_parallel", "2", "--data.global_batch_size", "8", "--data.micro_batch_size", "2"
    )
    cfg.validate(world_size=8)
    assert cfg.data_parallel_size == 4
    assert cfg.parallel.data_parallel is None  # stays derived: a saved config.yaml runs on another world size
    assert cfg.num_micro_batches == 1 and cfg.train_steps == 4 and cfg.tokens_per_step == 8 * 64
    cfg = cfg_with(
        "--training.train_steps", "none", "--training.train_samples", "100", "--data.global_batch_size", "8"
    )
    cfg.validate(world_size=1)
    assert cfg.train_steps == 13  # ceil(100 / 8)


INVALID = [
    (
        ["--parallel.context_parallel", "2", "--data.seq_length", "66"],
        2,
        "--data.seq_length (66) must be divisible by 2 x",
    ),
    (
        ["--parallel.tensor_parallel", "4"],
        4,
        "--parallel.tensor_parallel (4) must divide model.num_query_groups (2)",
    ),
    (
        ["--model.num_layers", "4", "--parallel.pipeline_parallel", "8"],
        8,
        "--parallel.pipeline_parallel (8) exceeds",
    ),
    (
        ["--model.num_layers", "3", "--parallel.pipeline_parallel", "2"],
        2,
        "--parallel.pipeline_parallel (2) must divide",
    ),
    (["--data.global_batch_size", "6", "--data.micro_batch_size", "2"], 2, "--data.global_batch_size (6)"),
    (["--parallel.tensor_parallel", "2"], 3, "does not divide the world size 3"),
    (
        ["--parallel.sequence_parallel"],
        1,
        "--parallel.sequence_parallel needs --parallel.tensor_parallel > 1",
    ),
    (["--parallel.virtual_pipeline_parallel", "2"], 1, "--parallel.virtual_pipeline_parallel"),
    (["--parallel.pipeline_parallel", "2", "--parallel.virtual_pipeline_parallel", "1"], 2, "a value >= 2"),
    (["--parallel.data_parallel", "4"], 2, "--parallel.data_parallel=4"),
    (["--training.train_samples", "10"], 1, "exactly one of --training.train_steps"),
    (["--optimizer.min_lr", "1", "--optimizer.lr", "0.1"], 1, "--optimizer.min_lr"),
    (["--optimizer.lr", "0"], 1, "--optimizer.lr must be > 0"),
    (["--logging.eval_interval", "5"], 1, "--logging.eval_interval needs a validation share"),
    (["--checkpoint.save_interval", "5"], 1, "--checkpoint.save_interval needs --checkpoint.save"),
    (["--data.mock", "false"], 1, "--data.paths is empty"),
    (["--data.seq_length", "70000"], 1, "--data.seq_length (70000) exceeds model.max_position_embeddings"),
    (["--data.cue_loss_weight", "-1"], 1, "--data.cue_loss_weight"),
    (["--data.paths", "a,b", "--data.weights", "1"], 1, "--data.weights has 1 values for 2"),
    (["--precision.loss_scale", "128"], 1, "--precision.loss_scale only applies"),
    (
        ["--precision.fp8", "hybrid", "--precision.dtype", "fp32"],
        1,
        "--precision.fp8 needs --precision.dtype",
    ),
    (["--training.exit_signal", "SIGNOPE"], 1, "--training.exit_signal: unknown signal"),
    (
        ["--model.num_query_groups", "3"],
        1,
        "model.num_attention_heads (4) must be divisible by model.num_query_groups",
    ),
]


@pytest.mark.parametrize("args, world, message", INVALID, ids=[m[:40] for _, _, m in INVALID])
def test_invalid_layouts_name_the_flag(args: list[str], world: int, message: str) -> None:
    cfg = cfg_with(*args)
    with pytest.raises(ConfigError) as info:
        cfg.validate(world_size=world)
    assert message in str(info.value)


def test_all_problems_reported_in_one_pass() -> None:
    cfg = cfg_with(
        "--parallel.tensor_parallel", "4", "--parallel.pipeline_parallel", "4", "--optimizer.lr", "0"
    )
    with pytest.raises(ConfigError) as info:
        cfg.validate(world_size=16)
    text = str(info.value)
    assert "--parallel.tensor_parallel (4)" in text and "--parallel.pipeline_parallel (4)" in text
    assert "--optimizer.lr" in text


@pytest.mark.skipif(te_installed(), reason="Transformer Engine is installed here")
def test_fp8_without_transformer_engine_is_refused_but_dry_run_only_warns() -> None:
    cfg = cfg_with("--precision.fp8", "hybrid")
    with pytest.raises(ConfigError, match="--precision.fp8 hybrid needs Transformer Engine.*not installed"):
        cfg.validate(world_size=1)
    cfg.validate(world_size=1, check_environment=False)  # dry runs on a laptop


def test_docs_reference_lists_every_field() -> None:
    """docs/training.md embeds the generated schema; regenerate with python -m megatron_endprompt.training.schema_doc."""
    from pathlib import Path

    from megatron_endprompt.training.schema_doc import BEGIN, END, markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    embedded = doc[doc.index(BEGIN) : doc.index(END) + len(END)]
    assert embedded == markdown(), (
        "docs/training.md is stale: paste the output of schema_doc between the markers"
    )
