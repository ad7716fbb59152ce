"""The upstream warnings of every launch are filtered in one place (megatron_endprompt/warnings_filter.py), only
those, and our own summary lines are printed once."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

from megatron_endprompt.warnings_filter import UPSTREAM_NOISE, quiet_upstream_warnings

REPO = Path(__file__).resolve().parents[2]

# Fragments of what megatron-core / torch printed at a tiny-recipe launch and resume before the filter existed.
NOISE_SEEN_BEFORE = (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed. Falling back to Torch Norm",
    "full scope is deprecated",
    "`load_state_dict` is deprecated",
    "deprecating ShardedTensor",
)


def test_filter_ignores_only_the_listed_messages() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_upstream_warnings()
        warnings.warn(
            "Transformer Engine and Apex are not installed. Falling back to Torch optimizers.", stacklevel=1
        )
        warnings.warn(
            "Please use DTensor instead and we are deprecating ShardedTensor.", FutureWarning, stacklevel=1
        )
        warnings.warn("Apex is not installed. Falling back to Torch Norm", DeprecationWarning, stacklevel=1)
        warnings.warn("something else went wrong", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == ["Apex is not installed. Falling back to Torch Norm", "something else went wrong"]
    assert len(UPSTREAM_NOISE) == 5


def _train(save: Path, steps: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_endprompt.train", "--config", str(REPO / "examples/tiny_cpu.yaml")]
    cmd += [
        "--training.train_steps",
        str(steps),
        "--logging.log_interval",
        "1",
        "--checkpoint.save",
        str(save),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def test_train_cli_launch_and_resume_print_no_upstream_noise(tmp_path) -> None:
    first = _train(tmp_path / "run", 1)
    resumed = _train(tmp_path / "run", 2)  # loading a checkpoint triggered the ShardedTensor deprecations
    for proc in (first, resumed):
        assert proc.returncode == 0, proc.stderr[-3000:]
        for fragment in NOISE_SEEN_BEFORE:
            assert fragment not in proc.stderr, fragment
        assert "Warning:" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.count("layer spec: local") == 1, proc.stderr
    assert first.stderr.count("finished at step 1") == 1
    assert resumed.stderr.count("finished at step 2") == 1
