"""The model-split rule (model/split.py) and its three callers: each names its own flags, none keeps a copy."""

from __future__ import annotations

import json

import pytest

from megatron_endprompt.convert import ConversionError
from megatron_endprompt.convert.hf_to_megatron import HF_SPLIT_NAMES, check_layout
from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.split import SplitNames, split_problems
from megatron_endprompt.training.config import load_config
from megatron_endprompt.training.validation import PARALLEL_NAMES, ConfigError

# 6 layers, 4 heads, 2 query groups, MLP width 176 (divisible by 1, 2, 4, 8, 11, 16)
MODEL = get_preset("tiny").replace(num_layers=6)
PLAIN = SplitNames(tp="TP={}", pp="PP={}", vp="VP={}")


@pytest.mark.parametrize("tp, pp, vp", [(1, 1, None), (2, 1, None), (2, 2, None), (1, 3, None), (1, 6, None),
                                        (2, 3, 2), (1, 2, 3), (1, 2, 1)])  # fmt: skip
def test_splits_that_fit(tp, pp, vp):
    assert split_problems(MODEL, tp, pp, vp, names=PLAIN) == []


@pytest.mark.parametrize(
    "changes, tp, message",
    [
        ({}, 4, "TP=4 must divide model.num_query_groups (2)"),
        ({"num_query_groups": 4}, 3, "TP=3 must divide model.num_query_groups (4)"),
        ({"ffn_hidden_size": 170}, 4, "TP=4 must divide model.ffn_hidden_size (170)"),
    ],
)
def test_tensor_parallel_must_divide_query_groups_and_mlp(changes, tp, message):
    problems = split_problems(MODEL.replace(**changes), tp, names=PLAIN)
    assert message in problems and all(p.startswith(f"TP={tp} must divide") for p in problems)


def test_every_tp_problem_is_reported():
    # heads are a multiple of the query groups, so TP fails on the heads only together with the groups
    problems = split_problems(MODEL.replace(ffn_hidden_size=172), 8, names=PLAIN)
    assert problems == [
        "TP=8 must divide model.num_attention_heads (4)",
        "TP=8 must divide model.num_query_groups (2)",
        "TP=8 must divide model.ffn_hidden_size (172)",
    ]


def test_pipeline_parallel_must_divide_layers():
    assert split_problems(MODEL, 1, 4, names=PLAIN) == ["PP=4 must divide model.num_layers (6)"]
    assert split_problems(MODEL, 1, 7, names=PLAIN) == ["PP=7 exceeds model.num_layers (6)"]


def test_virtual_pipeline_stages_must_divide_layers():
    assert split_problems(MODEL, 1, 2, 2, names=PLAIN) == ["PP=2 x VP=2 must divide model.num_layers (6)"]
    assert split_problems(MODEL, 1, 3, 3, names=PLAIN) == ["PP=3 x VP=3 must divide model.num_layers (6)"]
    assert split_problems(MODEL, 1, 7, 2, names=PLAIN) == ["PP=7 exceeds model.num_layers (6)"]


@pytest.mark.parametrize(
    "tp, pp, vp, message", [(0, 1, None, "TP=0"), (1, -1, None, "PP=-1"), (1, 2, 0, "VP=0")]
)
def test_sizes_below_one_are_reported_alone(tp, pp, vp, message):
    assert split_problems(MODEL, tp, pp, vp, names=PLAIN) == [f"{message} must be >= 1"]


def test_fields_named_as_the_caller_knows_them():
    names = SplitNames(tp="--tp {}", pp="--pp {}", fields={"num_layers": "the layers ({})"})
    assert split_problems(MODEL, 4, 4, names=names) == [
        "--tp 4 must divide model.num_query_groups (2)",
        "--pp 4 must divide the layers (6)",
    ]


def test_training_names_the_recipe_flags():
    assert split_problems(MODEL, 4, 2, 2, names=PARALLEL_NAMES) == [
        "--parallel.tensor_parallel (4) must divide model.num_query_groups (2)",
        "--parallel.pipeline_parallel (2) x --parallel.virtual_pipeline_parallel (2) must divide model.num_layers (6)",
    ]
    cfg = load_config(None, ["--model.preset", "tiny", "--model.num_layers", "6", "--data.mock",
                             "--training.train_steps", "4", "--data.seq_length", "64", "--data.global_batch_size", "4",
                             "--parallel.pipeline_parallel", "2", "--parallel.virtual_pipeline_parallel", "2"])  # fmt: skip
    with pytest.raises(ConfigError) as info:
        cfg.validate(world_size=2)
    assert "--parallel.virtual_pipeline_parallel (2) must divide model.num_layers (6)" in str(info.value)


def test_converter_names_its_flags_and_hf_fields():
    assert split_problems(MODEL, 4, 4, names=HF_SPLIT_NAMES) == [
        "--tp 4 must divide the number of query groups (2, HF num_key_value_heads)",
        "--pp 4 must divide the number of layers (6, HF num_hidden_layers)",
    ]
    with pytest.raises(ConversionError, match=r"^--pp 4 must divide the number of layers \(6"):
        check_layout(MODEL, 1, 4)  # new with the shared rule: the converter checked only pp > layers
    with pytest.raises(ConversionError, match=r"^--tp 0 must be >= 1; --pp 0 must be >= 1$"):
        check_layout(MODEL, 0, 0)
    check_layout(MODEL, 2, 3)


def test_evaluator_refuses_a_tp_the_checkpoint_cannot_take(tmp_path):
    from megatron_endprompt.eval.parallel_backend import ParallelMegatronBackend

    (tmp_path / "endprompt_model.json").write_text(json.dumps(MODEL.to_dict()))
    with pytest.raises(ValueError, match=r"^--tp 4 must divide model.num_query_groups \(2\)$"):
        ParallelMegatronBackend.from_checkpoint(tmp_path, tp=4, cp=1)  # before torch.distributed starts
