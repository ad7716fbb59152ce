# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""--prepend-bos: every document starts with the tokenizer's BOS; a tokenizer without one is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from megatron_endprompt.data import load_samples
from megatron_endprompt.data.builder import BuildConfig, build
from megatron_endprompt.data.tokenizers import load_tokenizer
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def _build(tmp, corpus, model, packing, prepend_bos, name):
    return build(
        BuildConfig(
            input=[str(corpus)],
            output_prefix=str(tmp / name),
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=model,
            scheme=SchemeConfig("contiguous", 32, 32),
            packing=packing,
            append_eod=True,
            prepend_bos=prepend_bos,
        )
    )


def test_every_document_starts_with_bos(tmp_path, corpus_jsonl, corpus_texts, sp_model) -> None:
    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    assert tok.bos is not None and tok.bos != tok.eod
    meta = _build(tmp_path, corpus_jsonl, sp_model, "concat", True, "concat")
    stream = np.concatenate([s["tokens"] for s in load_samples(meta["config"]["output_prefix"])])
    expected = np.concatenate([[tok.bos, *tok.encode(t), tok.eod] for t in corpus_texts])
    np.testing.assert_array_equal(stream, expected[: len(stream)])
    assert meta["config"]["prepend_bos"] is True and meta["tokenizer"]["bos"] == tok.bos
    for packing in ("aligned", "document"):
        meta = _build(tmp_path, corpus_jsonl, sp_model, packing, True, packing)
        samples = load_samples(meta["config"]["output_prefix"])
        assert len(samples) > 5
        assert all(int(samples[i]["tokens"][0]) == tok.bos for i in range(len(samples)))


def test_default_is_off(tmp_path, corpus_jsonl, corpus_texts, sp_model) -> None:
    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    meta = _build(tmp_path, corpus_jsonl, sp_model, "concat", False, "off")
    stream = np.concatenate([s["tokens"] for s in load_samples(meta["config"]["output_prefix"])])
    assert tok.bos not in stream.tolist()
    assert meta["config"]["prepend_bos"] is False


def test_tokenizer_without_bos_exits_2_naming_the_flag(tmp_path, corpus_jsonl) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(
        {w for line in corpus_jsonl.read_text().splitlines() for w in json.loads(line)["text"].split()}
    )
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tokenizer.json")).bos is None
    cmd = [sys.executable, str(ROOT / "tools/build_endprompt_data.py"), "--input", str(corpus_jsonl)]
    cmd += ["--output-prefix", str(tmp_path / "nobos"), "--tokenizer-type", "HuggingFaceTokenizer"]
    cmd += ["--tokenizer-model", str(tmp_path / "tokenizer.json"), "--seq-length", "32", "--prepend-bos"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--prepend-bos" in proc.stderr and "no BOS" in proc.stderr
    assert not list(tmp_path.glob("nobos*"))
