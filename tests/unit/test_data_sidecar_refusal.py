# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""A built prefix whose .seg position sidecar is missing is refused (never read as a plain token stream), with
an error naming the file, and at training start the --data.paths flag."""

import pytest

from megatron_endprompt.data import load_samples
from megatron_endprompt.data.builder import BuildConfig, build
from megatron_endprompt.positions import SchemeConfig
from megatron_endprompt.training.config import load_config
from megatron_endprompt.training.datasets import check_prefixes
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model  # noqa: F401


@pytest.fixture
def built_prefix(tmp_path, corpus_jsonl, sp_model):
    prefix = tmp_path / "seg_test"
    build(
        BuildConfig(
            input=[str(corpus_jsonl)],
            output_prefix=str(prefix),
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=sp_model,
            scheme=SchemeConfig("endprompt", 32, 1000),
            cues=["End."],
        )
    )
    return prefix


def test_missing_sidecar_is_refused_naming_the_file(built_prefix):
    assert len(load_samples(built_prefix)) > 0  # complete: readable
    seg = built_prefix.with_suffix(".seg")
    seg.unlink()
    with pytest.raises(FileNotFoundError, match="position sidecar missing") as err:
        load_samples(built_prefix)
    assert str(seg) in str(err.value)


def test_missing_sidecar_fails_the_training_check_naming_the_flag(built_prefix):
    built_prefix.with_suffix(".seg").unlink()
    cfg = load_config(
        None,
        ["--model.preset", "tiny", "--data.paths", str(built_prefix), "--data.seq_length", "32",
         "--training.train_steps", "1"],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"--data\.paths .*seg_test\.seg: position sidecar missing"):
        check_prefixes(cfg, cfg.model_config())
