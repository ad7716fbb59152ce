"""The toy reproduction's --jobs: extension runs trained and evaluated in parallel worker processes give the same
results as one process, each with its own log; a failing run stops the rest and names its log, and the same
command then continues from the finished runs."""

import itertools
import os
import time
from pathlib import Path

import pytest

UNITS = [("contiguous_short", 0), ("contiguous_short", 1), ("endprompt", 0), ("full_length", 0), ("base", 0)]


@pytest.fixture
def fakes(toy, monkeypatch) -> set[str]:
    """Training leaves an empty checkpoint holding the worker's pid and when it ran (runs named in the returned
    set fail);
    evaluation scores a checkpoint with its run's name, so a result landing on the wrong unit shows."""
    import megatron_endprompt.data.tokenizers as tokenizers
    import megatron_endprompt.eval.backends as backends
    import megatron_endprompt.eval.runner as runner

    failing: set[str] = set()

    def fake_run_training(out, name, spec):
        print(f"training {name}", flush=True)  # into the unit's log
        if name in failing:
            raise RuntimeError("boom")
        start = time.time()
        time.sleep(0.3)  # long enough for two runs to overlap
        ckpt = Path(spec["checkpoint"]["save"]) / "iter_0000001"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "ran").write_text(f"{os.getpid()} {start} {time.time()}")
        (ckpt / "checkpoint_complete").touch()  # a committed checkpoint, as training leaves it
        return ckpt

    def fake_evaluate(backend, tok, **request):
        return {"results": {"passkey": {str(n): backend.parent.name for n in request["lengths"]}}}

    monkeypatch.setattr(toy.experiments, "run_training", fake_run_training)
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    monkeypatch.setattr(tokenizers, "load_tokenizer", lambda *a: None)
    monkeypatch.setattr(backends.MegatronBackend, "from_checkpoint", staticmethod(lambda ckpt: Path(ckpt)))
    return failing


def run_units(toy, out: Path, units: list[tuple[str, int]], jobs: int) -> dict:
    cfg = toy.load_toy_config(None, ["eval_lengths=[256]", "eval_tasks=[passkey]"])
    base = out / "runs" / "base" / "iter_0000001"
    base.mkdir(parents=True, exist_ok=True)
    data = {v: f"/data/{v}" for v in ("contiguous_short", "endprompt", "full_length", "pose")}
    return toy.run_units(out, cfg, out / "tok.model", data, base, [toy.Unit(*u) for u in units], jobs)


def test_parallel_jobs_give_the_serial_results_with_one_log_per_run(toy, fakes, tmp_path) -> None:
    parallel = run_units(toy, tmp_path / "p", UNITS, jobs=2)
    serial = run_units(toy, tmp_path / "s", UNITS, jobs=1)
    scores = {u.label: r[1]["results"]["passkey"]["256"] for u, r in parallel.items()}
    assert list(parallel) == list(serial) == [toy.Unit(*u) for u in UNITS]  # the caller's order
    assert scores == {u.label: r[1]["results"]["passkey"]["256"] for u, r in serial.items()}
    assert scores["contiguous_short_s1"] == "contiguous_short_s1" and scores["base"] == "base"
    assert parallel[toy.Unit("full_length", 0)][0] > 0.2  # training seconds measured in the worker
    ran = [p.read_text().split() for p in (tmp_path / "p" / "runs").glob("*/iter_0000001/ran")]
    pids = {pid for pid, _, _ in ran}
    assert len(pids) == 4 and str(os.getpid()) not in pids  # a worker per run, not this process
    spans = sorted((float(a), float(b)) for _, a, b in ran)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))  # two at a time
    log = (tmp_path / "p" / "logs" / "endprompt_s0.log").read_text()
    assert "training endprompt_s0" in log and "contiguous_short" not in log


def test_a_failing_run_names_its_log_and_the_rerun_continues(toy, fakes, tmp_path) -> None:
    units = [("pose", 0), ("contiguous_short", 0), ("endprompt", 0), ("full_length", 0)]
    fakes.add("pose_s0")
    with pytest.raises(
        RuntimeError, match=r"pose_s0 failed \(exit code 1\): RuntimeError: boom; log: .*pose_s0\.log"
    ):
        run_units(toy, tmp_path, units, jobs=2)
    finished = {p.name for p in (tmp_path / "runs").glob("*.done.json")}
    assert "full_length_s0.done.json" in finished  # ran alongside the failure, and is kept
    fakes.clear()
    run_units(toy, tmp_path, units, jobs=2)
    assert (tmp_path / "logs" / "full_length_s0.log").read_text().count("training full_length_s0") == 1


def test_jobs_must_be_positive_and_threads_are_shared_out(toy, report, monkeypatch, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        toy.main(["--out", str(tmp_path), "--jobs", "0"])
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert toy.worker_threads(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert toy.worker_threads(10_000) == 1
    assert report.hardware(2, 1).endswith("2 parallel jobs of 1 torch thread(s) each")
