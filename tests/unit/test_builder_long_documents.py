# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Very long documents are tokenized in pieces cut at whitespace (issue 17: a 50 MB line took 6.7 GB).

What holds, tested here: a document of at most `max_chars` characters is encoded exactly as before (one call);
a longer one is cut by `whitespace_pieces`, whose pieces join back to the text, and its tokens are the pieces'
tokens concatenated. For byte-level BPE (GPT-2 / Llama-3 style) and SentencePiece with its default whitespace
normalisation, that concatenation equals the whole-text tokenization; for a tokenizer that prepends a word
marker to every call (Metaspace prepend_scheme="always", Llama-2's HF tokenizer) it differs only by tokens
inserted at the cuts. The memory bound itself is measured by benchmarks/builder_long_document.py.
"""

from __future__ import annotations

import difflib
import json
import random
import re

import numpy as np
import pytest

from megatron_endprompt.data.builder import BuildConfig, build
from megatron_endprompt.data.tokenizers import encode_in_pieces, load_tokenizer, whitespace_pieces
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import data_dir, make_texts, sp_model  # noqa: F401

SEPARATORS = (" ", " ", " ", "  ", "\n", "\n\n", " \t ", ", ")


def _long_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = " ".join(make_texts(40, seed=seed + 1)).split()
    return "".join(rng.choice(words) + rng.choice(SEPARATORS) for _ in range(n_words))


def _hf_tokenizer_json(directory, pre_tokenizer: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if pre_tokenizer == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(make_texts(200, seed=2), trainer)
    path = directory / f"{pre_tokenizer}.json"
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def bytelevel(tmp_path_factory):
    return load_tokenizer(
        "HuggingFaceTokenizer", _hf_tokenizer_json(tmp_path_factory.mktemp("bl"), "bytelevel")
    )


@pytest.fixture(scope="module")
def metaspace(tmp_path_factory):
    return load_tokenizer(
        "HuggingFaceTokenizer", _hf_tokenizer_json(tmp_path_factory.mktemp("ms"), "metaspace")
    )


class _CountingTokenizer:
    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def encode(self, text):
        self.calls.append(len(text))
        return self.tok.encode(text)


def test_document_below_the_bound_is_encoded_whole_and_unchanged(bytelevel):
    text = _long_text(300)
    counting = _CountingTokenizer(bytelevel)
    ids = encode_in_pieces(counting, text, max_chars=len(text))
    assert counting.calls == [len(text)] and ids.dtype == np.int32
    assert ids.tolist() == bytelevel.encode(text)
    assert list(whitespace_pieces(text, len(text))) == [text]


def test_whitespace_pieces_cut_at_the_first_whitespace_run_past_the_bound():
    text = _long_text(3000)
    max_chars = 200
    pieces = list(whitespace_pieces(text, max_chars))
    assert "".join(pieces) == text and len(pieces) > 10
    for piece, following in zip(pieces, pieces[1:], strict=False):
        assert len(piece) >= max_chars
        assert not piece[-1].isspace() and following[0].isspace()  # between a word and its whitespace
        # no earlier cut was possible: no word-to-whitespace change between the bound and the cut
        assert not re.search(r"\S\s", piece[max_chars - 1 : -1])


def test_whitespace_pieces_cut_hard_when_there_is_no_whitespace():
    text = "x" * 1000 + " tail"
    pieces = list(whitespace_pieces(text, 300))
    # 300 + 300 cut hard (no whitespace within the next 300 characters), then at the space at 1000.
    assert [len(p) for p in pieces] == [300, 300, 400, 5] and "".join(pieces) == text


@pytest.mark.parametrize("max_chars", [37, 500, 5000])
def test_long_document_pieces_concatenate_to_the_whole_text_tokens(bytelevel, sp_model, max_chars):
    text = _long_text(4000)
    assert len(text) > 5000
    sp = load_tokenizer("SentencePieceTokenizer", sp_model)
    for tok in (bytelevel, sp):
        ids = encode_in_pieces(tok, text, max_chars)
        pieces = list(whitespace_pieces(text, max_chars))
        assert ids.tolist() == [i for p in pieces for i in tok.encode(p)]  # by construction
        assert ids.tolist() == tok.encode(text), tok.name  # and equal to the whole-text tokenization


def test_marker_prepending_tokenizer_differs_only_by_insertions_at_cuts(metaspace):
    text = _long_text(4000)
    pieces = list(whitespace_pieces(text, 500))
    ids, whole = encode_in_pieces(metaspace, text, 500).tolist(), metaspace.encode(text)
    assert ids != whole  # the documented caveat is real for this kind of tokenizer
    changes = difflib.SequenceMatcher(a=whole, b=ids, autojunk=False).get_opcodes()
    edits = [op for op in changes if op[0] != "equal"]
    assert all(op[0] == "insert" and op[4] - op[3] == 1 for op in edits)  # one inserted token per place
    assert len(edits) <= len(pieces) - 1  # at most one per cut


def test_builder_output_is_unchanged_by_piecewise_encoding(tmp_path, bytelevel, sp_model):
    docs = [_long_text(n, seed=n) for n in (50, 2000, 120, 3000)]
    corpus = tmp_path / "long.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    outputs = []
    for max_chars in (0, 400):
        cfg = BuildConfig(
            input=[str(corpus)], output_prefix=str(tmp_path / f"o{max_chars}"),
            tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp_model,
            scheme=SchemeConfig("contiguous", 64, 64), append_eod=True, max_chars_per_encode=max_chars,
        )  # fmt: skip
        meta = build(cfg)
        assert meta["config"]["max_chars_per_encode"] == max_chars
        outputs.append((tmp_path / f"o{max_chars}.bin").read_bytes())
    assert outputs[0] == outputs[1] and len(outputs[0]) > 0


def test_negative_max_chars_is_refused_naming_the_flag(tmp_path, sp_model):
    cfg = BuildConfig(
        input=["x.jsonl"], output_prefix=str(tmp_path / "o"), tokenizer_type="SentencePieceTokenizer",
        tokenizer_model=sp_model, max_chars_per_encode=-1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="--max-chars-per-encode must be >= 0"):
        build(cfg)
