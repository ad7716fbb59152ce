# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Within a seed, datasets built from the same documents read them in the same order, whatever their scheme
(the toy reproduction's paired comparisons rest on it); another seed reads another order."""

import numpy as np
import pytest

from megatron_endprompt.data.builder import BuildConfig, build
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model  # noqa: F401
from tests.unit.test_data_blended import process_group  # noqa: F401

SCHEMES = {
    "contiguous": (SchemeConfig("contiguous", 32, 32), []),
    "pose": (SchemeConfig("pose", 32, 512), []),
    "endprompt": (SchemeConfig("endprompt", 32, 512), ["End."]),
    "tail_document": (SchemeConfig("endprompt-tail", 32, 512, 4, tail_source="document"), []),
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory, corpus_jsonl, sp_model):
    out = tmp_path_factory.mktemp("shared_order")
    prefixes = {}
    for name, (scheme, cues) in SCHEMES.items():
        cfg = BuildConfig(
            input=[str(corpus_jsonl)],
            output_prefix=str(out / name),
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=sp_model,
            scheme=scheme,
            cues=cues,
            append_eod=True,
            packing="aligned",
            seed=7 if name == "pose" else 0,  # the build seed draws positions, not the training order
        )
        build(cfg)
        prefixes[name] = cfg.output_prefix
    return prefixes


def _train(prefix: str, seed: int):
    from megatron_endprompt.data.blended import build_train_valid_test

    return build_train_valid_test([prefix], split="100,0,0", seed=seed)[0]


def _origins_in_order(train) -> list[tuple[int, int]]:
    return [tuple(o) for o in np.asarray(train.dataset.origins)[train.indices[train._order]]]


def test_contiguous_and_pose_read_the_same_samples_in_the_same_order(process_group, variants):
    contiguous, pose = _train(variants["contiguous"], 3), _train(variants["pose"], 3)
    assert len(contiguous) == len(pose) > 10
    tokens = [[ds[i]["tokens"].tolist() for i in range(len(ds))] for ds in (contiguous, pose)]
    assert tokens[0] == tokens[1]  # same documents, same order
    assert [contiguous[i]["tokens"].tolist() for i in range(len(contiguous))] != [
        contiguous.dataset[i]["tokens"].tolist() for i in range(len(contiguous))
    ]  # and shuffled, not the build order
    assert any(len(pose.dataset.segments(i)) > 1 for i in range(len(pose)))  # pose really jumps


def test_another_seed_reads_another_order(process_group, variants):
    first, other = _train(variants["contiguous"], 3), _train(variants["contiguous"], 4)
    assert _origins_in_order(first) != _origins_in_order(other)
    assert sorted(_origins_in_order(first)) == sorted(_origins_in_order(other))


@pytest.mark.parametrize("name", ["endprompt", "tail_document"])
def test_other_schemes_read_their_common_documents_in_the_same_order(process_group, variants, name):
    """A cue variant consumes fewer document tokens per sample, so its samples start at partly other documents;
    the documents both start a sample with come in the same relative order."""
    contiguous, other = (
        _origins_in_order(_train(variants["contiguous"], 3)),
        _origins_in_order(_train(variants[name], 3)),
    )
    common = set(contiguous) & set(other)
    assert len(common) >= len(contiguous) // 3
    assert [o for o in contiguous if o in common] == [o for o in other if o in common]
