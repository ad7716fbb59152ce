"""The training step of the demo and the examples (`experiments.run_training`), with the trainer subprocess
faked: a run that stopped early is not taken as finished.

The demo itself runs end to end in tests/integration/test_demo.py."""

import subprocess
from pathlib import Path


def test_a_training_run_stopped_early_is_not_taken_as_finished(tmp_path: Path, monkeypatch) -> None:
    """The trainer exits 0 after a stop signal with a checkpoint taken early: the demo and the examples (the
    toy caches finished runs) must not use that checkpoint as the run's result."""
    import pytest

    from megatron_endprompt import experiments
    from megatron_endprompt.training.checkpoint_io import begin_save, commit_save

    reached = {"step": 3}

    def fake_trainer(cmd, env):  # the checkpoint a stopped (or finished) run leaves
        begin_save(save, reached["step"])
        commit_save(save, reached["step"])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(experiments.subprocess, "run", fake_trainer)
    save = tmp_path / "runs" / "r"
    run = experiments.RunSpec("/data/x", 256, 4, 5, 1e-3, str(save))
    with pytest.raises(RuntimeError, match=r"'r' stopped at step 3 of 5 \(a stop signal\?\)"):
        experiments.run_training(tmp_path, "r", experiments.recipe(run, {}))
    reached["step"] = 5
    assert experiments.run_training(tmp_path, "r", experiments.recipe(run, {})).name == "iter_0000005"
