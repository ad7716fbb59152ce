# ruff: noqa: F811  (the fixture imported from the unit tests is redefined as an argument)
"""`python -m megatron_endprompt.train` and its SLURM launcher run as processes: a broken recipe, or a model flag
that disagrees with --checkpoint.init_from, exits 2 naming the file or the flag, without a traceback; a launch
and its resume print no upstream warning noise; the launcher's dry run prints the multi-node layout. The same
checks in process: tests/unit/test_recipe_yaml_errors.py, test_train_config_init_from.py,
test_warnings_filter.py, test_recipes.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.unit.test_recipe_yaml_errors import UNCLOSED_LIST
from tests.unit.test_train_config_init_from import TINY, converted  # noqa: F401

REPO = Path(__file__).resolve().parents[2]

# Fragments of what megatron-core / torch printed at a tiny-recipe launch and resume before the filter existed.
NOISE_SEEN_BEFORE = (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed. Falling back to Torch Norm",
    "full scope is deprecated",
    "`load_state_dict` is deprecated",
    "deprecating ShardedTensor",
)


def test_yaml_syntax_error_cli_exits_2_without_traceback(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(UNCLOSED_LIST)
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_endprompt.train", "--config", str(recipe), "--dry-run"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"error: {recipe}:5:" in proc.stderr and "Traceback" not in proc.stderr


def test_train_cli_exits_2_naming_the_flag(converted) -> None:
    cmd = [sys.executable, "-m", "megatron_endprompt.train", "--config", TINY]
    cmd += ["--checkpoint.init_from", str(converted), "--model.preset", "tiny"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--model.preset tiny: num_layers = 2" in proc.stderr


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


def test_slurm_launcher_dry_run(tmp_path) -> None:
    script = REPO / "examples/slurm_launch.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "SLURM_NNODES": "2",
        "GPUS_PER_NODE": "8",
        "PYTHON": sys.executable,
        "REPO_DIR": str(REPO),
    }
    proc = subprocess.run(
        [
            "bash",
            str(script),
            "examples/llama3_8b_endprompt_64k.yaml",
            str(tmp_path / "run"),
            "--optimizer.lr",
            "1e-5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "world 16 = TP 1 x PP 1 x CP 1 x DP 16" in proc.stdout
