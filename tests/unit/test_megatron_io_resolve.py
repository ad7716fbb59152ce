"""The converters follow `latest` with training's rules (one resolver), keeping ConversionError messages."""

from __future__ import annotations

import pytest

from megatron_endprompt.convert.errors import ConversionError
from megatron_endprompt.convert.megatron_io import MODEL_JSON, resolve_checkpoint_dir
from megatron_endprompt.training.checkpoint_io import LATEST_FILE, begin_save, commit_save


def _save(root, iteration):
    tmp = begin_save(root, iteration)
    (tmp / MODEL_JSON).write_text("{}")
    return commit_save(root, iteration)


def test_converter_resolves_save_roots_like_training(tmp_path):
    older, newer = _save(tmp_path, 3), _save(tmp_path, 7)
    assert resolve_checkpoint_dir(tmp_path) == newer
    assert resolve_checkpoint_dir(older) == older  # a checkpoint dir itself
    (tmp_path / LATEST_FILE).write_text("3\n")
    assert resolve_checkpoint_dir(tmp_path) == older


def test_converter_refuses_latest_outside_the_save_dir(tmp_path, caplog):
    outside = _save(tmp_path / "other", 9)
    save = tmp_path / "save"
    own = _save(save, 1)
    (save / LATEST_FILE).write_text(str(outside) + "\n")
    assert resolve_checkpoint_dir(save) == own  # not the absolute path it names
    assert "not an iteration directory name" in caplog.text


def test_converter_stops_on_unreadable_latest_without_complete_iteration(tmp_path):
    (tmp_path / "iter_0000002").mkdir()
    (tmp_path / LATEST_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(ConversionError, match=f"--megatron-dir: {tmp_path / LATEST_FILE} is unreadable"):
        resolve_checkpoint_dir(tmp_path)
    with pytest.raises(ConversionError, match="is not a directory"):
        resolve_checkpoint_dir(tmp_path / "missing")
