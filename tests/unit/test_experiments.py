"""The small-experiment machinery the demo and the examples share (`megatron_endprompt.experiments`): scaling-only
checkpoint copies, RoPE scaling fields, eval task options, the focused corpus. Training runs:
test_demo_run_training.py; the demo end to end: tests/integration/test_demo.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_endprompt import experiments
from megatron_endprompt.checkpoint_layout import MODEL_CONFIG_FILE
from megatron_endprompt.demo_corpus import CorpusConfig


def _checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"\x01\x02\x03")
    model = {"num_layers": 2, "max_position_embeddings": 256, "rope_scaling": {"type": "none", "factor": 1.0}}
    (path / MODEL_CONFIG_FILE).write_text(json.dumps(model))
    return path


@pytest.mark.parametrize("link", [False, True])
def test_config_copy_changes_only_the_copy_s_model_config(tmp_path: Path, link: bool) -> None:
    base = _checkpoint(tmp_path / "base")
    scaling = experiments.rope_scaling("yarn", 8, 256)
    changes = {"rope_scaling": scaling, "max_position_embeddings": 2048}
    dest = experiments.config_copy(base, tmp_path / "copy", changes, link=link)
    saved = json.loads((dest / MODEL_CONFIG_FILE).read_text())
    assert saved["rope_scaling"] == {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256}
    assert saved["max_position_embeddings"] == 2048 and saved["num_layers"] == 2
    assert (dest / "weights.bin").read_bytes() == b"\x01\x02\x03"
    same_file = (dest / "weights.bin").stat().st_ino == (base / "weights.bin").stat().st_ino
    assert same_file == link  # hard-linked weights, or a copy
    original = json.loads((base / MODEL_CONFIG_FILE).read_text())
    assert original["rope_scaling"]["type"] == "none" and original["max_position_embeddings"] == 256
    assert changes == {"rope_scaling": scaling, "max_position_embeddings": 2048}  # not consumed
    # a second copy replaces the first
    experiments.config_copy(base, dest, {"rope_scaling": experiments.rope_scaling("linear", 4, 256)})
    assert json.loads((dest / MODEL_CONFIG_FILE).read_text())["rope_scaling"] == {
        "type": "linear",
        "factor": 4.0,
    }


def test_task_options_draw_eval_keys_as_the_corpus_does() -> None:
    options = experiments.task_options(["passkey", "niah_single_1", "perplexity"], 999, 3)
    assert options == {"passkey": {"key_max": 999}, "niah_single_1": {"number_digits": 3}}


def test_focused_corpus_holds_retrieval_documents_only() -> None:
    cfg = CorpusConfig(documents=10, retrieval_fraction=0.6, repeat_fraction=0.1, seed=5)
    focused = experiments.focused_corpus(cfg, 4.0, (80, 170))
    assert (focused.retrieval_fraction, focused.repeat_fraction, focused.passkey_weight) == (1.0, 0.0, 4.0)
    assert (focused.min_words, focused.max_words, focused.documents, focused.seed) == (80, 170, 10, 5)


def test_constant_lr_and_recipe() -> None:
    run = experiments.RunSpec("/data/x", 128, 8, 50, 1e-3, "/runs/x", seed=2)
    spec = experiments.recipe(run, {"num_layers": 2})
    assert spec["model"] == {"preset": "tiny", "num_layers": 2}
    assert spec["data"]["micro_batch_size"] == 8 and spec["training"] == {"train_steps": 50, "seed": 2}
    spec["optimizer"].update(experiments.constant_lr(1e-3, 50))
    assert spec["optimizer"]["lr_schedule"] == "constant" and spec["optimizer"]["min_lr"] == 1e-3
