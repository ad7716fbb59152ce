"""Resume refusals and recoveries of the training CLI, in process on the tiny CPU recipe (mock data, fp32).

Each failure mode of docs/reliability.md ("Checkpoints and resume") has one test here, named after it: the run
must stop with the documented exit code and a message naming the file or flag, or recover as documented.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from megatron_endprompt.training.checkpoint_io import COMPLETE_MARKER, LATEST_FILE

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "tiny_cpu.yaml"
EXIT_CONFIG, EXIT_NONFINITE = 2, 3


def run(save: Path, caplog, *args: str, steps: int = 4) -> tuple[int, str]:
    """`python -m megatron_endprompt.train` in this process (4 steps, a checkpoint every 2); (exit code, log)."""
    from megatron_endprompt.parallel import destroy
    from megatron_endprompt.train import main

    argv = ["--config", str(RECIPE), "--training.train_steps", str(steps), "--optimizer.warmup_steps", "1",
            "--logging.eval_interval", "none", "--logging.log_interval", "1", "--checkpoint.save", str(save),
            "--checkpoint.save_interval", "2", *args]  # fmt: skip
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO):
            rc = main(argv)
    finally:
        destroy()
    return rc, caplog.text


def last_error(log: str) -> str:
    return [line for line in log.splitlines() if "ERROR" in line][-1]


def committed_weights_are_finite(ckpt_dir: Path) -> bool:
    from megatron_endprompt.convert import load_model

    model = load_model(ckpt_dir)
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints after steps 2 and 4 (copied by the tests that damage it)."""
    save = tmp_path_factory.mktemp("resume") / "run"
    rc, _ = run(save, _NullCaplog())
    assert rc == 0
    return save


class _NullCaplog:
    """caplog is function-scoped; the module fixture runs without capturing."""

    text = ""

    def clear(self) -> None:
        pass

    def at_level(self, level):
        import contextlib

        return contextlib.nullcontext()


def copy_run(saved: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "run"))


def test_saved_rng_state_is_not_pickle(saved):
    files = sorted((saved / "iter_0000004" / "rng").iterdir())
    assert [f.name for f in files] == ["rank_00000.safetensors"]
    assert not list(saved.rglob("rng/*.pt"))


def test_planted_pickle_in_rng_file_does_not_run_on_resume(saved, tmp_path, caplog):
    """A pickle whose unpickling writes a file, planted as the RNG state (manifest updated as an attacker
    would): the resume stops with exit 2 naming the file, and the file is never written."""
    from megatron_endprompt.training.checkpoint_manifest import manifest_text

    run_dir = copy_run(saved, tmp_path)
    proof = tmp_path / "payload_ran"
    rng_file = run_dir / "iter_0000004" / "rng" / "rank_00000.safetensors"
    rng_file.write_bytes(pickle.dumps(_Payload(str(proof))))
    (run_dir / "iter_0000004" / COMPLETE_MARKER).write_text(
        manifest_text(run_dir / "iter_0000004", COMPLETE_MARKER)
    )
    rc, log = run(run_dir, caplog, steps=6)
    assert rc == EXIT_CONFIG
    assert str(rng_file) in last_error(log) and "not a readable RNG state file" in last_error(log)
    assert not proof.exists()


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_corrupt_newest_checkpoint_names_dir_and_file_then_falls_back_on_request(saved, tmp_path, caplog):
    run_dir = copy_run(saved, tmp_path)
    shard = next((run_dir / "iter_0000004").glob("*.distcp"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    rc, log = run(run_dir, caplog, steps=6)
    assert rc == EXIT_CONFIG
    line = last_error(log)
    assert f"checkpoint {run_dir / 'iter_0000004'} is corrupt: {shard.name}" in line
    assert "--checkpoint.fallback_to_previous" in line

    rc, log = run(run_dir, caplog, "--checkpoint.fallback_to_previous", "true", steps=6)
    assert rc == 0, log[-3000:]
    assert "resumed from" in log and "iter_0000002 at iteration 2" in log
    assert (run_dir / "iter_0000004.aside").is_dir()  # the damaged one kept, out of the way
    assert (run_dir / LATEST_FILE).read_text().strip() == "iter_0000006"


def test_flipped_byte_in_optimizer_shard_is_detected_on_resume(saved, tmp_path, caplog):
    run_dir = copy_run(saved, tmp_path)
    shard = next((run_dir / "iter_0000004" / "optimizer").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    rc, log = run(run_dir, caplog, steps=6)
    assert rc == EXIT_CONFIG
    assert f"optimizer/{shard.name}: crc32" in last_error(log)


def test_undecodable_latest_falls_back_to_newest_complete(saved, tmp_path, caplog):
    run_dir = copy_run(saved, tmp_path)
    (run_dir / LATEST_FILE).write_bytes(b"\xff\xfe\xfa")
    rc, log = run(run_dir, caplog, steps=6)
    assert rc == 0, log[-3000:]
    assert "unreadable" in log and "resumed from" in log and "at iteration 4" in log


def test_save_dir_with_only_incomplete_iterations_stops_unless_fresh_start_allowed(saved, tmp_path, caplog):
    run_dir = copy_run(saved, tmp_path)
    for marker in run_dir.glob(f"iter_*/{COMPLETE_MARKER}"):
        marker.unlink()
    rc, log = run(run_dir, caplog)
    assert rc == EXIT_CONFIG
    assert "nothing to resume from" in last_error(log) and "--checkpoint.allow_fresh_start" in last_error(log)
    assert not (run_dir / "iter_0000002" / COMPLETE_MARKER).exists()  # nothing was overwritten

    rc, log = run(run_dir, caplog, "--checkpoint.allow_fresh_start", "true")
    assert rc == 0, log[-3000:]
    assert (run_dir / "iter_0000002.aside").is_dir() and (run_dir / "iter_0000004.aside").is_dir()
    assert (run_dir / "iter_0000004" / COMPLETE_MARKER).is_file()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--data.global_batch_size", "16"), ("--data.seed", "7")],
)
def test_resume_with_changed_data_settings_is_refused(saved, tmp_path, caplog, flag, value):
    run_dir = copy_run(saved, tmp_path)
    rc, log = run(run_dir, caplog, flag, value, steps=6)
    assert rc == EXIT_CONFIG
    assert flag in last_error(log) and "--checkpoint.allow_changed_data" in last_error(log)
    rc, log = run(run_dir, caplog, flag, value, "--checkpoint.allow_changed_data", "true", steps=6)
    assert rc == 0, log[-3000:]


def test_nonfinite_grad_norm_stops_before_save_and_latest_names_last_good(tmp_path, caplog, monkeypatch):
    """An Inf gradient injected before step 3's optimizer step (the loss stays finite): exit 3 naming the step,
    no iter_0000003 or later, `latest` still names step 2, whose weights are finite."""
    from megatron_endprompt.training.engine import Engine

    real = Engine._forward_backward

    def poisoned(self, micro_batches, forward_only):
        sums = real(self, micro_batches, forward_only)
        if not forward_only and self.iteration == 2:
            next(p for p in self.model[0].parameters()).main_grad.fill_(float("inf"))
        return sums

    monkeypatch.setattr(Engine, "_forward_backward", poisoned)
    save = tmp_path / "run"
    rc, log = run(save, caplog, "--checkpoint.save_interval", "1")
    assert rc == EXIT_NONFINITE
    assert "step 3: gradient norm is" in last_error(log)
    assert (save / LATEST_FILE).read_text().strip() == "iter_0000002"
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000001", "iter_0000002"]
    assert committed_weights_are_finite(save)


def test_lr_blowup_never_commits_nonfinite_weights(tmp_path, caplog):
    """lr 1e30 without clipping, a save after every step: the run stops with exit 3 at the first non-finite
    value, every committed checkpoint holds finite weights and `latest` names the newest of them. (On the tiny
    model the loss check fires first; the two tests below inject the cases it cannot see.)"""
    save = tmp_path / "run"
    rc, log = run(save, caplog, "--optimizer.lr", "1e30", "--optimizer.min_lr", "0", "--optimizer.clip_grad", "0",
                  "--optimizer.warmup_steps", "0", "--checkpoint.save_interval", "1", steps=6)  # fmt: skip
    assert rc == EXIT_NONFINITE, log[-3000:]
    committed = sorted(save.glob("iter_???????"))
    assert committed, "step 1 is finite and must have been saved"
    assert all(committed_weights_are_finite(ckpt) for ckpt in committed)
    assert (save / LATEST_FILE).read_text().strip() == committed[-1].name


def test_nonfinite_weights_are_never_committed_and_latest_names_last_good(tmp_path, caplog, monkeypatch):
    """A NaN written into a weight after step 3 (loss and grad norm of that step finite): the step-3 save is
    refused with exit 3 and `latest` still names step 2."""
    from megatron_endprompt.training.engine import Engine

    real = Engine.train_step

    def poisoned(self, micro_batches):
        result = real(self, micro_batches)
        if result.iteration == 3:
            with torch.no_grad():
                next(self.model[0].parameters()).view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(Engine, "train_step", poisoned)
    save = tmp_path / "run"
    rc, log = run(save, caplog, "--checkpoint.save_interval", "1")
    assert rc == EXIT_NONFINITE
    assert "non-finite weights" in last_error(log)
    assert (save / LATEST_FILE).read_text().strip() == "iter_0000002"
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000001", "iter_0000002"]
    assert committed_weights_are_finite(save)


def test_a_new_run_never_replaces_an_existing_iteration_dir(saved, tmp_path, caplog):
    """`latest` names iteration 2 although a complete iteration 4 exists: resuming at 2 renames 4 aside
    instead of saving over it."""
    run_dir = copy_run(saved, tmp_path)
    (run_dir / LATEST_FILE).write_text("iter_0000002\n")
    before = (run_dir / "iter_0000004" / COMPLETE_MARKER).read_text()
    rc, log = run(run_dir, caplog)
    assert rc == 0, log[-3000:]
    assert (run_dir / "iter_0000004.aside" / COMPLETE_MARKER).read_text() == before
    assert "moved" in log and os.path.isdir(run_dir / "iter_0000004")


def test_resume_with_changed_data_paths_is_refused_but_moved_data_is_not():
    from megatron_endprompt.training.config import TrainConfig
    from megatron_endprompt.training.loop import data_identity
    from megatron_endprompt.training.validation import resume_data_problems

    cfg = TrainConfig()
    cfg.data.paths = ["/data/a/web_train", "/data/a/books_train"]
    saved = data_identity(cfg)
    cfg.data.paths = ["/mnt/copy/web_train", "/mnt/copy/books_train"]  # the same files under another folder
    assert resume_data_problems(cfg, saved) == []
    cfg.data.paths = ["/data/a/web_train"]
    (problem,) = resume_data_problems(cfg, saved)
    assert problem.startswith("--data.paths was ['web_train', 'books_train']")
    assert resume_data_problems(cfg, {}) == []  # checkpoints from before the check: nothing to compare
