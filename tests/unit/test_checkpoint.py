"""Checkpoint directory protocol with fake payloads: atomic commit, `latest`, keep-last-N, crash leftovers."""

from __future__ import annotations

import pytest

from megatron_endprompt.training.checkpoint_io import (
    COMPLETE_MARKER,
    LATEST_FILE,
    begin_save,
    checkpoint_name,
    commit_save,
    find_latest,
    iteration_of,
    list_checkpoints,
)


def _save(root, iteration, keep_last=None, payload="weights"):
    tmp = begin_save(root, iteration)
    (tmp / "payload.bin").write_text(f"{payload}@{iteration}")
    return commit_save(root, iteration, keep_last=keep_last)


def test_names_round_trip():
    assert checkpoint_name(42) == "iter_0000042"
    assert iteration_of("/x/iter_0000042") == 42
    assert iteration_of("/x/iter_0000042.tmp") is None
    with pytest.raises(ValueError):
        checkpoint_name(-1)


def test_commit_publishes_and_updates_latest(tmp_path):
    assert find_latest(tmp_path) is None
    path = _save(tmp_path, 10)
    assert path.name == "iter_0000010" and (path / COMPLETE_MARKER).is_file()
    assert (tmp_path / LATEST_FILE).read_text().strip() == "iter_0000010"
    assert find_latest(tmp_path) == path
    assert not list(tmp_path.glob("*.tmp"))


def test_interrupted_save_is_never_picked_and_is_cleaned_next_time(tmp_path):
    _save(tmp_path, 10)
    tmp = begin_save(tmp_path, 20)  # the process dies while writing iteration 20
    (tmp / "payload.bin").write_text("half")
    assert find_latest(tmp_path).name == "iter_0000010"
    # A directory renamed into place without the marker (e.g. copied by hand) is ignored too.
    (tmp_path / "iter_0000030").mkdir()
    assert find_latest(tmp_path).name == "iter_0000010"
    _save(tmp_path, 40)
    assert not (tmp_path / "iter_0000020.tmp").exists()
    assert find_latest(tmp_path).name == "iter_0000040"


def test_stale_or_broken_latest_falls_back_to_scan(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / LATEST_FILE).write_text("iter_0000099\n")
    assert find_latest(tmp_path).name == "iter_0000002"
    (tmp_path / LATEST_FILE).write_text("")
    assert find_latest(tmp_path).name == "iter_0000002"


def test_keep_last_n_deletes_oldest_after_latest_moves(tmp_path):
    for it in (1, 2, 3, 4):
        _save(tmp_path, it, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_0000003", "iter_0000004"]
    assert not (tmp_path / "iter_0000001").exists()
    with pytest.raises(ValueError, match="keep_last"):
        _save(tmp_path, 5, keep_last=0)


def test_resaving_an_iteration_replaces_it(tmp_path):
    _save(tmp_path, 7, payload="old")
    path = _save(tmp_path, 7, payload="new")
    assert (path / "payload.bin").read_text() == "new@7"
    assert find_latest(tmp_path) == path
