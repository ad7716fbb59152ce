"""The one-command GPU check rehearses every step on CPU (GPU_CHECK_SMOKE=1): it cannot rot between GPU sessions,
and what it returns fits the 8 files a lent GPU machine sends back, checkpoints kept elsewhere."""

import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = ("env", "install", "gpu_tests", "te_tests", "throughput", "train_cli", "train_cli_fast")
MUST_PASS_ON_CPU = ("env", "install", "throughput", "train_cli", "train_cli_fast")
NO_GPU_STATUSES = ("ok", "no tests ran")  # the GPU / TE tests skip at import on CPU


@pytest.mark.slow
def test_gpu_check_smoke_returns_few_files_and_every_step(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "GPU_CHECK_SMOKE": "1",
        "OUT": str(out),
        "GPU_CHECK_WORK": str(work),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and {p.name for p in files} == {"summary.md", "results.json", "logs.tar.gz"}, files
    assert not [p for p in out.rglob("*") if p.is_dir()], "checkpoints or scratch directories landed in OUT"
    assert (work / "train_cli_run" / "latest").exists()  # the checkpoints were written, elsewhere

    summary = (out / "summary.md").read_text()
    statuses = {m[1]: m[2] for m in re.finditer(r"^\| (\w+) \| \d+ \| \d+ \| ([^|]+) \|", summary, re.M)}
    statuses = {name: status.strip() for name, status in statuses.items()}
    assert set(statuses) == set(STEPS), statuses
    assert all(statuses[name] == "ok" for name in MUST_PASS_ON_CPU), statuses
    assert all(statuses[name].startswith(NO_GPU_STATUSES) for name in ("gpu_tests", "te_tests")), statuses
    assert "| ep8k_b1 | ours | local |" in summary  # the throughput table with its spec column

    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["steps"]] == list(STEPS)
    # The GPU limits (the rehearsal allows 4x) add up to 530 s: the check ends within 9 minutes on one H100.
    assert sum(int(s["limit_s"]) for s in results["steps"]) == 4 * 530
    assert results["smoke"] is True and results["env"]["missing"] == []
    assert all(r["status"] == "ok" for r in results["throughput"]["results"])
    assert all(results["train_cli"][run]["last_step"] == 4 for run in ("train_cli", "train_cli_fast"))

    with tarfile.open(out / "logs.tar.gz") as tar:
        archived = set(tar.getnames())
    assert {"logs/steps.tsv", "logs/env.json", "logs/gpu_tests.xml", "logs/throughput/results.md"} <= archived
    assert not [n for n in archived if "iter_" in n or n.endswith(".distcp")]
