"""Every parallel layout reproduces the single-rank training run; checkpoints resume across layouts.

One 2-rank gloo launch (`_layout_worker.py`) trains the tiny model for a few AdamW steps under each layout on
EndPrompt+PoSE samples (per-sample position jumps, cue at positions 65532..65535) and returns its numbers;
the tests below compare them with the reference run (see the worker's docstring).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_layout_worker.py")
LAYOUTS = ("dp2", "dp2_distopt", "tp2", "tp2_sp", "pp2", "cp2")
RESUMES = ("tp2_to_tp1", "pp2_to_pp1", "dp2_distopt")
FIRST_STEP_TOL = 1e-5
"""Loss and grad norm of the first step (same weights, same data): only reduction order differs."""
CURVE_TOL = 5e-5
"""Later steps: AdamW amplifies rounding differences of the gradients a little."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("layouts")
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(WORKER), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0 or not (out / "results.json").is_file():
        pytest.fail(
            f"layout worker failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    ranks = json.loads((out / "results.json").read_text())["ranks"]
    return {"rank0": ranks[0], "rank1": ranks[1]}


def _ok(res: dict, key: str) -> None:
    err = res["errors"].get(key)
    assert err is None, f"{key} raised in the worker:\n{err}"


def _close(
    name: str, got: list[dict], want: list[dict], fields: tuple[str, ...], first_tol: float = FIRST_STEP_TOL
):
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        tol = first_tol if i == 0 else CURVE_TOL
        for f in fields:
            assert math.isclose(g[f], w[f], rel_tol=0, abs_tol=tol), (
                f"{name} step {i + 1}: {f} = {g[f]!r}, single-rank reference {w[f]!r} (|diff| > {tol})"
            )


def test_reference_run_learns(results):
    res = results["rank0"]
    _ok(res, "reference")
    steps = res["reference"]["steps"]
    losses = [s["loss"] for s in steps]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], f"loss did not decrease: {losses}"
    assert all(s["num_tokens"] == 4 * 31 for s in steps), (
        "every position but the last of each sample has a target"
    )
    assert steps[0]["lr"] == pytest.approx(1.5e-3) and steps[1]["lr"] == pytest.approx(3e-3)  # 2 warmup steps
    assert all(math.isfinite(s["cue_loss"]) and math.isfinite(s["text_loss"]) for s in steps)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_single_rank(results, layout):
    res = results["rank0"]
    _ok(res, "reference")
    _ok(res, layout)
    got, ref = res["layouts"][layout]["steps"], res["reference"]["steps"]
    _close(layout, got, ref, ("loss", "grad_norm", "text_loss", "cue_loss"))
    assert res["layouts"][layout]["eval"] == pytest.approx(res["reference"]["eval"], abs=CURVE_TOL)


def test_ranks_report_the_same_numbers(results):
    for layout in LAYOUTS:
        a, b = results["rank0"]["layouts"][layout], results["rank1"]["layouts"][layout]
        if a is not None and b is not None:
            assert a["steps"] == b["steps"], f"{layout}: ranks disagree on the step results"


@pytest.mark.parametrize("resume", RESUMES)
def test_resume_reproduces_the_remaining_steps(results, resume):
    """Checkpoint after step 1 (at TP=2, PP=2 or with the distributed optimizer), resume, run steps 2..3."""
    res = results["rank0"]
    _ok(res, f"resume_{resume}")
    got = res["resume"][resume]
    assert got["iteration"] == 1 and got["extra"] == {"probe": 1}
    assert [s["iteration"] for s in got["steps"]] == [2, 3]
    ref = res["reference"]["steps"][1:]
    _close(resume, got["steps"], ref, ("loss", "grad_norm", "lr"), first_tol=CURVE_TOL)
