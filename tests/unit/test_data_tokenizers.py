# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Tokenizers: SentencePiece and Hugging Face loaders, identity, special ids; builder input formats."""

import gzip
import json

import numpy as np
import pytest

from megatron_endprompt.data import load_samples
from megatron_endprompt.data.builder import BuildConfig, build
from megatron_endprompt.data.tokenizers import load_tokenizer
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import corpus_texts, data_dir, make_texts, sp_model  # noqa: F401


def test_sentencepiece_tokenizer(sp_model):
    import sentencepiece as spm

    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    ref = spm.SentencePieceProcessor(model_file=sp_model)
    text = "the quiet river travels slowly, café ☀"
    assert tok.encode(text) == ref.encode(text)  # no BOS/EOS added
    assert tok.decode(tok.encode(text)) == text
    assert tok.eod == 2 and tok.bos == 1 and tok.eod not in tok.encode(text)
    assert tok.token_to_id("<|eot|>") is not None and tok.token_to_id("<|eot|>") in tok.encode("<|eot|>")
    assert tok.token_to_id("definitely-not-a-piece") is None
    assert tok.vocab_size == ref.get_piece_size() and len(tok.sha256) == 64


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|eot_id|>"])
    tok.train_from_iterator(make_texts(200, seed=2), trainer)
    out = tmp_path_factory.mktemp("hf_tok")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "bos_token": {"content": "<s>"}})
    )
    return out


def test_huggingface_tokenizer_dir_and_file(hf_dir):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    for model in (hf_dir, hf_dir / "tokenizer.json"):
        tok = load_tokenizer("HuggingFaceTokenizer", model)
        text = "the sky is blue and the sun is yellow"
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids
        assert tok.eod == ref.token_to_id("</s>") and tok.bos == ref.token_to_id("<s>")
        assert tok.token_to_id("<|eot_id|>") == ref.token_to_id("<|eot_id|>")
        assert tok.decode(tok.encode(text)) == text


def test_unknown_tokenizer_type_names_flag():
    with pytest.raises(ValueError, match="--tokenizer-type"):
        load_tokenizer("GPT2BPETokenizer", "x")
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        load_tokenizer("SentencePieceTokenizer", "/nonexistent.model")


def test_input_formats_give_the_same_samples(tmp_path, sp_model, hf_dir):
    """The same documents as .jsonl.gz, .parquet (with two keys) and .txt files build identical samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = make_texts(30, seed=5)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet", row_group_size=7)
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(texts):
        (tmp_path / "txt" / f"{i:03d}.txt").write_text(t, encoding="utf-8")
    outputs = []
    for name, inputs in (
        ("gz", [tmp_path / "a.jsonl.gz"]),
        ("pq", [tmp_path / "a.parquet"]),
        ("txt", [tmp_path / "txt" / "*.txt"]),
    ):
        for tok_type, model in (("SentencePieceTokenizer", sp_model), ("HuggingFaceTokenizer", str(hf_dir))):
            cfg = BuildConfig(
                input=[str(p) for p in inputs],
                output_prefix=str(tmp_path / f"{name}{tok_type}"),
                tokenizer_type=tok_type,
                tokenizer_model=model,
                scheme=SchemeConfig("contiguous", 32, 32),
                append_eod=True,
            )
            meta = build(cfg)
            assert meta["counts"]["documents_read"] == len(texts)
            ds = load_samples(cfg.output_prefix)
            outputs.append((tok_type, np.stack([ds[i]["tokens"] for i in range(len(ds))])))
    for tok_type in ("SentencePieceTokenizer", "HuggingFaceTokenizer"):
        same = [arr for t, arr in outputs if t == tok_type]
        assert all(np.array_equal(same[0], arr) for arr in same[1:])


def test_multiple_json_keys_are_joined(tmp_path, sp_model):
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps({"title": "green sky", "text": "blue sun"}) + "\n")
    cfg = BuildConfig(
        input=[str(path)],
        output_prefix=str(tmp_path / "k"),
        tokenizer_type="SentencePieceTokenizer",
        tokenizer_model=sp_model,
        scheme=SchemeConfig("contiguous", 4, 4),
        json_keys=["title", "text"],
        packing="document",
    )
    build(cfg)
    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    np.testing.assert_array_equal(
        load_samples(tmp_path / "k")[0]["tokens"], tok.encode("green sky\nblue sun")[:4]
    )


def test_huggingface_dir_without_tokenizer_json_uses_autotokenizer(tmp_path, sp_model):
    """A Llama-2 style HF dir (tokenizer.model + config only) loads through transformers, offline."""
    import shutil

    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "eos_token": "</s>",
                "bos_token": "<s>",
                "unk_token": "<unk>",
            }
        )
    )
    hf = load_tokenizer("HuggingFaceTokenizer", tmp_path)
    sp = load_tokenizer("SentencePieceTokenizer", sp_model)
    text = "the grass is green and the river travels slowly"
    assert hf.encode(text) == sp.encode(text)
    assert (hf.eod, hf.bos) == (sp.eod, sp.bos)
    assert hf.token_to_id("<|eot|>") == sp.token_to_id("<|eot|>")


def test_train_sentencepiece_split_digits(tmp_path) -> None:
    from megatron_endprompt.data.tokenizers import load_tokenizer, train_sentencepiece

    texts = [f"The pass key is {n}. Remember it. {n} is the pass key." for n in range(100, 999, 7)] * 20
    pieces = {}
    for split in (False, True):
        tok = load_tokenizer(
            "SentencePieceTokenizer",
            train_sentencepiece(texts, tmp_path / f"s{split}", 400, split_digits=split),
        )
        pieces[split] = [tok.decode([i]).strip() for i in tok.encode("key is 471.")]
    assert [p for p in pieces[True] if p.isdigit()] == ["4", "7", "1"]
    assert any(len(p) > 1 and p.isdigit() for p in pieces[False])  # merged digits without the option
