# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Builder: megatron-core reads our files, the reader replays the scheme functions, determinism, bad input,
sidecar size and versioning. The CLI, and a build killed mid-way: tests/integration/test_build_cli.py."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_endprompt import positions as pos
from megatron_endprompt.data import load_samples
from megatron_endprompt.data.builder import BuildConfig, BuildError, build
from megatron_endprompt.data.tokenizers import load_tokenizer
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import (  # noqa: F401
    corpus_jsonl,
    corpus_texts,
    data_dir,
    make_texts,
    sp_model,
    write_jsonl,
)

CUES = ["End.", "@eod", "@token:<|eot|>", "This is the end of text, please pay attention here"]


def _cfg(tmp, corpus, model, scheme, **kw) -> BuildConfig:
    return BuildConfig(
        input=[str(corpus)],
        output_prefix=str(tmp / kw.pop("name", "out")),
        tokenizer_type="SentencePieceTokenizer",
        tokenizer_model=model,
        scheme=scheme,
        cues=kw.pop("cues", CUES if scheme.uses_cue else []),
        append_eod=kw.pop("append_eod", True),
        **kw,
    )


def _stream(texts, tok, append_eod=True) -> np.ndarray:
    """Independent tokenisation of the corpus: documents (+EOD) concatenated."""
    ids = []
    for t in texts:
        ids += tok.encode(t) + ([tok.eod] if append_eod else [])
    return np.asarray(ids, dtype=np.int64)


def test_megatron_indexed_dataset_reads_our_files(tmp_path, corpus_jsonl, corpus_texts, sp_model):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    stream = _stream(corpus_texts, tok)
    for scheme in (SchemeConfig("contiguous", 48, 48), SchemeConfig("endprompt", 48, 4096)):
        meta = build(_cfg(tmp_path, corpus_jsonl, sp_model, scheme, name=scheme.scheme))
        prefix = meta["config"]["output_prefix"]
        ref = IndexedDataset(prefix)
        ours = load_samples(prefix)
        assert len(ref) == len(ours) == meta["counts"]["samples"] > 10
        text_parts = []
        for i in range(len(ref)):
            tokens = ref[i].astype(np.int64)
            np.testing.assert_array_equal(tokens, ours[i]["tokens"])
            is_cue = pos.roles(ours.segments(i))
            text_parts.append(tokens[~is_cue])
        text = np.concatenate(text_parts)
        # Text tokens, in order, are exactly the independent tokenisation (up to the dropped tail).
        np.testing.assert_array_equal(text, stream[: len(text)])
        assert len(stream) - len(text) == meta["counts"]["tokens_dropped_tail"]


def test_aligned_packing_starts_every_sample_at_a_document_start(
    tmp_path, corpus_jsonl, corpus_texts, sp_model
):
    """`--packing aligned`: each sample = whole documents then the head of the one that overflows; nothing of
    that document reaches the next sample. Checked against an independent packing of the tokenised corpus."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    p = 48
    meta = build(_cfg(tmp_path, corpus_jsonl, sp_model, SchemeConfig("contiguous", p, p), packing="aligned"))
    expected, current, dropped = [], [], 0
    for text in corpus_texts:
        current += tok.encode(text) + [tok.eod]
        if len(current) >= p:
            expected.append(current[:p])
            dropped += len(current) - p
            current = []
    ref = IndexedDataset(meta["config"]["output_prefix"])
    assert len(ref) == len(expected) == meta["counts"]["samples"] > 10
    for i, sample in enumerate(expected):
        np.testing.assert_array_equal(ref[i].astype(np.int64), sample)
    starts = {tuple(tok.encode(t)[:3]) for t in corpus_texts}
    assert all(tuple(ref[i][:3].tolist()) in starts for i in range(len(ref)))  # a document start, always
    counts = meta["counts"]
    assert (counts["tokens_truncated"], counts["tokens_dropped_tail"]) == (dropped, len(current))
    concat = build(_cfg(tmp_path, corpus_jsonl, sp_model, SchemeConfig("contiguous", p, p), name="concat"))
    assert concat["counts"]["samples"] > len(expected) and concat["counts"]["tokens_truncated"] == 0


def _expected(scheme: SchemeConfig, cue_ids, seed: int, i: int):
    """What the pure scheme functions give for sample i (rng seeded by (seed, i); cue drawn first)."""
    rng = np.random.default_rng([seed, i])
    cue = cue_ids[int(rng.integers(len(cue_ids)))] if scheme.uses_cue else None
    p, t = scheme.seq_length, scheme.target_length
    if scheme.scheme == "contiguous":
        return pos.contiguous(p), cue
    if scheme.scheme == "endprompt":
        return pos.endprompt(p, t, len(cue)), cue
    if scheme.scheme == "endprompt-tail":
        return pos.endprompt_tail(p, t, scheme.terminal_length, scheme.placement, rng), cue
    if scheme.scheme == "pose":
        return pos.pose(p, t, scheme.pose_chunks, rng), cue
    return pos.endprompt_pose(p, t, len(cue), scheme.pose_chunks, rng), cue


@given(
    scheme=st.sampled_from(pos.SCHEMES),
    p=st.integers(24, 96),
    t_mult=st.integers(2, 40),
    k=st.integers(1, 12),
    n=st.integers(1, 4),
    placement=st.sampled_from(pos.PLACEMENTS),
    seed=st.integers(0, 2**31),
    w=st.sampled_from([0.0, 0.1, 0.5]),
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_reader_replays_scheme_functions(
    tmp_path, corpus_jsonl, corpus_texts, sp_model, scheme, p, t_mult, k, n, placement, seed, w
):
    t = p if scheme == "contiguous" else p * t_mult
    cfg = SchemeConfig(scheme, p, t, terminal_length=k, placement=placement, pose_chunks=n)
    meta = build(_cfg(tmp_path, corpus_jsonl, sp_model, cfg, seed=seed, name=f"r{seed}"))
    ds = load_samples(meta["config"]["output_prefix"], cue_loss_weight=w)
    cue_ids = [np.asarray(c["tokens"]) for c in meta["cues"]]
    stream = _stream(corpus_texts, load_tokenizer("SentencePieceTokenizer", sp_model))
    offset = 0
    assert len(ds) > 0
    for i in range(len(ds)):
        segments, cue = _expected(cfg, cue_ids, seed, i)
        sample = ds[i]
        assert ds.segments(i) == segments
        np.testing.assert_array_equal(sample["position_ids"], pos.position_ids(segments))
        np.testing.assert_array_equal(sample["loss_weights"], pos.loss_weights(segments, w))
        n_text = p - (0 if cue is None else len(cue))
        np.testing.assert_array_equal(sample["tokens"][:n_text], stream[offset : offset + n_text])
        if cue is not None:
            np.testing.assert_array_equal(sample["tokens"][n_text:], cue)
        np.testing.assert_array_equal(sample["labels"][:-1], sample["tokens"][1:])
        assert sample["loss_weights"][-1] == 0.0
        offset += n_text


def _outputs(prefix):
    return {s: Path(f"{prefix}{s}").read_bytes() for s in (".bin", ".idx", ".seg")}


def test_deterministic_across_runs_and_workers(tmp_path, corpus_jsonl, sp_model):
    scheme = SchemeConfig("endprompt-pose", 40, 4000, pose_chunks=3)
    a = build(_cfg(tmp_path, corpus_jsonl, sp_model, scheme, name="a", workers=1, seed=7, batch_docs=16))
    b = build(_cfg(tmp_path, corpus_jsonl, sp_model, scheme, name="b", workers=2, seed=7, batch_docs=16))
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")
    drop = ("throughput", "config")
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    build(_cfg(tmp_path, corpus_jsonl, sp_model, scheme, name="c", seed=8))
    assert _outputs(tmp_path / "a")[".seg"] != _outputs(tmp_path / "c")[".seg"]


def test_sidecar_overhead_endprompt_8k(tmp_path, sp_model):
    corpus = write_jsonl(tmp_path / "big.jsonl", make_texts(400, seed=3, min_words=100, max_words=200))
    scheme = SchemeConfig("endprompt", 8192, 65536)
    meta = build(_cfg(tmp_path, corpus, sp_model, scheme, name="big"))
    assert meta["counts"]["samples"] >= 3
    bin_size = os.path.getsize(tmp_path / "big.bin")
    assert os.path.getsize(tmp_path / "big.seg") <= 0.02 * bin_size


BAD_LINES = [
    b'{"text": "a fine document with enough words to fill one sample of the test corpus easily ok"}',
    b'{"text": "broken json',
    b'{"body": "missing key"}',
    b'{"text": "   "}',
    b'{"text": "bad \xff\xfe bytes"}',
    b'{"text": "short"}',
    b"",
    b'{"text": 17}',
    b'{"text": "another fine document with enough words to fill one sample of the test corpus easily"}',
]


def test_bad_input_counts_and_strict(tmp_path, sp_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(BAD_LINES) + b"\n")
    scheme = SchemeConfig("contiguous", 16, 16)
    meta = build(_cfg(tmp_path, bad, sp_model, scheme, name="bad", packing="document"))
    expected = {
        "malformed_json": 1,
        "missing_key": 1,
        "empty_text": 1,
        "invalid_utf8": 1,
        "too_short": 1,
        "blank_line": 1,
        "not_text": 1,
    }
    assert {k: v for k, v in meta["counts"]["skipped"].items() if v} == expected
    assert meta["counts"]["documents_read"] == len(BAD_LINES) and meta["counts"]["samples"] == 2
    on_disk = json.loads((tmp_path / "bad.meta.json").read_text())
    assert on_disk["counts"]["skipped"] == meta["counts"]["skipped"]
    with pytest.raises(BuildError, match=r"bad.jsonl:2: malformed_json"):
        build(_cfg(tmp_path, bad, sp_model, scheme, name="strict", packing="document", strict=True))
    assert not list(tmp_path.glob("strict*"))  # nothing left behind


def _build_with_sidecar_version(tmp, corpus, model, version: int) -> Path:
    """Build prefix `tmp/v` and overwrite its .seg header's version field (bytes 8-12) with `version`."""
    build(_cfg(tmp, corpus, model, SchemeConfig("endprompt", 32, 1000), name="v"))
    seg = tmp / "v.seg"
    data = bytearray(seg.read_bytes())
    data[8:12] = struct.pack("<I", version)
    seg.write_bytes(bytes(data))
    return tmp / "v"


def test_unknown_sidecar_version_rejected(tmp_path, corpus_jsonl, sp_model):
    from megatron_endprompt.data.coverage import coverage_report

    _build_with_sidecar_version(tmp_path, corpus_jsonl, sp_model, 99)
    with pytest.raises(ValueError, match="unsupported sidecar version 99"):
        load_samples(tmp_path / "v")
    with pytest.raises(ValueError, match="unsupported sidecar version 99"):
        coverage_report(str(tmp_path / "v"))


def test_flag_errors_before_work(tmp_path, corpus_jsonl, sp_model):
    with pytest.raises(ValueError, match="--terminal-length"):
        build(
            _cfg(
                tmp_path, corpus_jsonl, sp_model, SchemeConfig("endprompt-tail", 16, 100, terminal_length=16)
            )
        )
    with pytest.raises(ValueError, match="--cue"):
        build(_cfg(tmp_path, corpus_jsonl, sp_model, SchemeConfig("endprompt", 16, 100), cues=[]))
    with pytest.raises(ValueError, match="longest --cue"):
        build(_cfg(tmp_path, corpus_jsonl, sp_model, SchemeConfig("endprompt", 8, 100), cues=["x " * 20]))
    with pytest.raises(FileNotFoundError, match="--input"):
        build(_cfg(tmp_path, tmp_path / "nope*.jsonl", sp_model, SchemeConfig("contiguous", 16, 16)))
    with pytest.raises(ValueError, match="--packing must be one of concat, aligned, document, got 'zigzag'"):
        build(_cfg(tmp_path, corpus_jsonl, sp_model, SchemeConfig("contiguous", 16, 16), packing="zigzag"))
    assert not list(tmp_path.glob("out*"))


def test_memory_does_not_grow_with_corpus_size(tmp_path, sp_model):
    import tracemalloc

    peaks = []
    for n_docs in (150, 1500):
        corpus = write_jsonl(tmp_path / f"m{n_docs}.jsonl", make_texts(n_docs, seed=4))
        tracemalloc.start()
        build(
            _cfg(
                tmp_path,
                corpus,
                sp_model,
                SchemeConfig("endprompt", 64, 4096),
                name=f"m{n_docs}",
                batch_docs=32,
            )
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert os.path.getsize(tmp_path / "m1500.bin") > 8 * os.path.getsize(tmp_path / "m150.bin")
    assert peaks[1] < 1.5 * peaks[0] + 256 * 1024, peaks
