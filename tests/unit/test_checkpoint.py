"""Checkpoint directory protocol with fake payloads: atomic commit, `latest`, keep-last-N, crash leftovers,
never starting over silently, never overwriting an iteration, the manifest catching damaged files."""

from __future__ import annotations

import json
import logging

import pytest

from megatron_endprompt.training.checkpoint_io import (
    COMPLETE_MARKER,
    LATEST_FILE,
    CheckpointError,
    begin_save,
    checkpoint_name,
    commit_save,
    find_latest,
    iteration_of,
    list_checkpoints,
    set_aside_after,
    verify_checkpoint,
)
from megatron_endprompt.training.checkpoint_manifest import CorruptCheckpointError


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


def test_a_save_never_replaces_an_existing_iteration_dir(tmp_path):
    path = _save(tmp_path, 7, payload="old")
    with pytest.raises(CheckpointError, match="iter_0000007 already exists"):
        _save(tmp_path, 7, payload="new")
    assert (path / "payload.bin").read_text() == "old@7"
    (tmp_path / "iter_0000008").mkdir()  # incomplete, but still somebody's directory
    with pytest.raises(CheckpointError, match="iter_0000008 already exists"):
        begin_save(tmp_path, 8)


def test_undecodable_latest_falls_back_to_newest_complete_with_a_warning(tmp_path, caplog):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / LATEST_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path).name == "iter_0000002"
    assert str(tmp_path / LATEST_FILE) in caplog.text and "iter_0000002" in caplog.text


def test_undecodable_latest_without_complete_iteration_stops_naming_the_file(tmp_path):
    (tmp_path / "iter_0000004").mkdir()
    (tmp_path / LATEST_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match=f"{tmp_path / LATEST_FILE}.*unreadable"):
        find_latest(tmp_path)


def test_iterations_without_completion_marker_stop_unless_fresh_start_allowed(tmp_path):
    (tmp_path / "iter_0000004").mkdir()
    (tmp_path / "iter_0000008").mkdir()
    with pytest.raises(CheckpointError, match="none is complete.*allow_fresh_start"):
        find_latest(tmp_path)
    assert find_latest(tmp_path, allow_fresh_start=True) is None
    moved = set_aside_after(tmp_path, None)  # what a fresh start does before its first save
    assert sorted(p.name for p in moved) == ["iter_0000004.aside", "iter_0000008.aside"]
    assert find_latest(tmp_path) is None  # set-aside dirs are not iterations any more
    _save(tmp_path, 4)


def test_an_interrupted_first_save_is_a_fresh_start(tmp_path):
    begin_save(tmp_path, 4)  # only a .tmp: nothing was ever committed
    assert find_latest(tmp_path) is None


@pytest.mark.parametrize(
    "named", ["/etc", "../other/iter_0000002", "iter_0000002/../iter_0000002", "sub/iter_1"]
)
def test_latest_must_name_an_iteration_inside_the_save_dir(tmp_path, named, caplog):
    outside = tmp_path / "other" / "iter_0000002"
    outside.mkdir(parents=True)
    (outside / COMPLETE_MARKER).write_text("")
    save = tmp_path / "save"
    _save(save, 1)
    (save / LATEST_FILE).write_text(named.replace("/etc", str(outside)) + "\n")
    with caplog.at_level(logging.WARNING):
        assert find_latest(save) == save / "iter_0000001"
    assert "not an iteration directory name" in caplog.text


def test_latest_may_hold_a_bare_iteration_number(tmp_path):
    _save(tmp_path, 3)
    _save(tmp_path, 5)
    (tmp_path / LATEST_FILE).write_text("3\n")
    assert find_latest(tmp_path).name == "iter_0000003"


def test_set_aside_after_keeps_newer_iterations_under_another_name(tmp_path):
    for it in (1, 2, 3):
        _save(tmp_path, it)
    moved = set_aside_after(tmp_path, 1)
    assert [p.name for p in moved] == ["iter_0000002.aside", "iter_0000003.aside"]
    assert (moved[0] / "payload.bin").read_text() == "weights@2"
    _save(tmp_path, 2)  # the name is free again
    assert [p.name for p in set_aside_after(tmp_path, 1)] == ["iter_0000002.aside2"]


def test_manifest_records_every_file_and_verifies(tmp_path):
    path = _save(tmp_path, 3)
    manifest = json.loads((path / COMPLETE_MARKER).read_text())
    assert manifest["hash"] == "crc32"
    assert manifest["files"]["payload.bin"]["size"] == len("weights@3")
    assert verify_checkpoint(path) is True


def test_truncated_shard_is_detected_naming_dir_and_file(tmp_path):
    path = _save(tmp_path, 3, payload="x" * 1000)
    with open(path / "payload.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {path} is corrupt: payload.bin: 100 bytes"):
        verify_checkpoint(path)


def test_flipped_bytes_in_a_shard_are_detected(tmp_path):
    path = _save(tmp_path, 3, payload="x" * 1000)
    data = bytearray((path / "payload.bin").read_bytes())
    data[500] ^= 0x01
    (path / "payload.bin").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"payload.bin: crc32 .* \(bytes changed\)"):
        verify_checkpoint(path)
    (path / "payload.bin").unlink()
    with pytest.raises(CorruptCheckpointError, match="payload.bin: missing"):
        verify_checkpoint(path)


def test_old_empty_marker_loads_unverified_with_a_warning(tmp_path, caplog):
    path = _save(tmp_path, 3)
    (path / COMPLETE_MARKER).write_text("")
    with caplog.at_level(logging.WARNING):
        assert verify_checkpoint(path) is False
    assert "loaded unverified" in caplog.text
