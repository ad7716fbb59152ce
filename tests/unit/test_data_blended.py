# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Blended train/valid/test datasets through megatron-core, seeded shuffling, resumable DP batch order."""

import numpy as np
import pytest

from megatron_endprompt.data import load_samples
from megatron_endprompt.data.builder import BuildConfig, build
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model  # noqa: F401


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A single-process gloo group (megatron's BlendedDataset needs torch.distributed)."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory, corpus_jsonl, sp_model):
    out = tmp_path_factory.mktemp("blend")
    result = []
    for name, scheme in (("ep", SchemeConfig("endprompt", 32, 512)), ("pose", SchemeConfig("pose", 32, 512))):
        cfg = BuildConfig(
            input=[str(corpus_jsonl)],
            output_prefix=str(out / name),
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=sp_model,
            scheme=scheme,
            cues=["End."] if scheme.uses_cue else [],
            append_eod=True,
        )
        build(cfg)
        result.append(cfg.output_prefix)
    return result


def _signature(ds, n=None):
    return [ds[i]["tokens"].tobytes() + ds[i]["position_ids"].tobytes() for i in range(n or len(ds))]


def test_blend_splits_and_weights(process_group, prefixes):
    from megatron_endprompt.data.blended import build_train_valid_test

    train, valid, test = build_train_valid_test(
        [(prefixes[0], 0.75), (prefixes[1], 0.25)],
        split="80,10,10",
        seed=5,
        cue_loss_weight=0.3,
        num_samples=(200, 16, 16),
    )
    assert (len(train), len(valid), len(test)) == (200, 16, 16)
    sample = train[0]
    for key in ("tokens", "labels", "loss_weights", "position_ids"):
        assert sample[key].shape == (32,)
    ids = np.array([int(train[i]["dataset_id"]) for i in range(len(train))])
    assert abs((ids == 0).mean() - 0.75) < 0.02
    # Cue targets of the endprompt prefix carry the requested weight.
    ep = next(train[i] for i in range(len(train)) if int(train[i]["dataset_id"]) == 0)
    assert np.isclose(ep["loss_weights"][-2], 0.3) and ep["loss_weights"][-1] == 0
    # Splits are disjoint: valid samples never appear in train.
    assert not set(_signature(valid)) & set(_signature(train))
    again = build_train_valid_test(
        [(prefixes[0], 0.75), (prefixes[1], 0.25)],
        split="80,10,10",
        seed=5,
        cue_loss_weight=0.3,
        num_samples=(200, 16, 16),
    )[0]
    assert _signature(again) == _signature(train)
    other = build_train_valid_test(
        [(prefixes[0], 0.75), (prefixes[1], 0.25)],
        split="80,10,10",
        seed=6,
        cue_loss_weight=0.3,
        num_samples=(200, 16, 16),
    )[0]
    assert _signature(other, 20) != _signature(train, 20)


def test_single_prefix_one_epoch_is_a_permutation(process_group, prefixes):
    from megatron_endprompt.data.blended import build_train_valid_test

    train, valid, test = build_train_valid_test([prefixes[0]], split="100,0,0", seed=1)
    assert valid is None and test is None
    base = load_samples(prefixes[0])
    assert len(train) == len(base)
    assert sorted(_signature(train)) == sorted(_signature(base))
    assert _signature(train) != _signature(base)  # shuffled


def test_the_order_does_not_depend_on_where_the_data_lies(process_group, prefixes, tmp_path):
    """A seed reproduces a run wherever its data is (a copied --out, another mount, another name): the order is
    keyed by the source corpus. A prefix built before the source record (no .origin.npy) keeps the old order,
    keyed by its file name and size."""
    import shutil
    from pathlib import Path

    from megatron_endprompt.data.blended import build_train_valid_test

    src = Path(prefixes[0])
    for f in src.parent.glob(src.name + ".*"):
        shutil.copy(f, tmp_path / f.name)
        shutil.copy(f, tmp_path / f.name.replace(src.name, "renamed", 1))
        shutil.copy(f, tmp_path / f.name.replace(src.name, "old", 1))
    (tmp_path / "old.origin.npy").unlink()
    orders = [
        _signature(build_train_valid_test([p], split="100,0,0", seed=1)[0])
        for p in (str(src), str(tmp_path / src.name), str(tmp_path / "renamed"), str(tmp_path / "old"))
    ]
    assert orders[0] == orders[1] == orders[2]
    assert orders[3] != orders[0] and sorted(orders[3]) == sorted(orders[0])


def test_batch_indices_layout():
    from megatron_endprompt.data.blended import batch_indices

    per_rank = [batch_indices(16, 8, 2, r, 2) for r in range(2)]
    assert per_rank[0] == [[16, 17], [20, 21]] and per_rank[1] == [[18, 19], [22, 23]]
    flat = sorted(i for rank in per_rank for mb in rank for i in mb)
    assert flat == list(range(16, 24))
    with pytest.raises(ValueError, match="multiple"):
        batch_indices(0, 6, 2, 0, 2)


def test_resume_continues_identically(process_group, prefixes):
    from megatron_endprompt.data.blended import ResumableBatches, build_train_valid_test

    train = build_train_valid_test([prefixes[1]], split="100,0,0", seed=3, num_samples=(64, None, None))[0]
    full = list(ResumableBatches(train, global_batch_size=8, micro_batch_size=2, dp_rank=1, dp_size=2))
    assert len(full) == 8 and full[0][0]["tokens"].shape == (2, 32)
    it = ResumableBatches(train, 8, 2, dp_rank=1, dp_size=2)
    for _ in zip(range(3), it, strict=False):
        pass
    assert it.consumed_samples == 24
    resumed = list(ResumableBatches(train, 8, 2, dp_rank=1, dp_size=2, consumed_samples=it.consumed_samples))
    assert len(resumed) == 5
    for a, b in zip(resumed, full[3:], strict=True):
        for mb_a, mb_b in zip(a, b, strict=True):
            for key in mb_a:
                np.testing.assert_array_equal(mb_a[key], mb_b[key])


def test_samples_pickle_by_path(prefixes):
    import pickle

    ds = load_samples(prefixes[0], cue_loss_weight=0.2)
    blob = pickle.dumps(ds)
    assert len(blob) < 1000  # the memory-mapped tokens are not copied
    again = pickle.loads(blob)
    assert again.cue_loss_weight == 0.2 and _signature(again, 5) == _signature(ds, 5)


def test_unweighted_blend_honours_num_samples_over_epochs(process_group, prefixes):
    from megatron_endprompt.data.blended import build_train_valid_test

    total = sum(len(load_samples(p)) for p in prefixes)
    train = build_train_valid_test(prefixes, split="100,0,0", seed=2, num_samples=(3 * total, 0, 0))[0]
    assert len(train) >= 3 * total
