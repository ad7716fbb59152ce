"""examples/real_model in process: the report's Wilson interval and the settings' refusals (the script runs end to
end in tests/integration/test_real_model_example.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "real_model"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"real_model_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_wilson_interval_matches_known_values():
    report = _module("report")
    lo, hi = report.wilson(0, 3)
    assert lo == 0.0 and hi == pytest.approx(56.15, abs=0.01)
    lo, hi = report.wilson(6, 6)
    assert lo == pytest.approx(60.97, abs=0.01) and hi == pytest.approx(100.0)
    cell = {"samples": [{"score": 100.0}, {"score": 0.0}, {"score": 100.0}]}
    assert report.accuracy_cell(cell) == "2/3 (21-94%)"
    assert report.accuracy_cell(None) == "not run"


def test_settings_refuse_unknown_keys_and_long_physical_length():
    settings = _module("settings")
    with pytest.raises(ValueError, match="--set 'nope=1'"):
        settings.load_config("full", ["nope=1"])
    with pytest.raises(ValueError, match="physical_length must be <= 2048"):
        settings.load_config("full", ["physical_length=4096"])
    cfg = settings.load_config("full", ["beyond_lengths=[12288]"])
    assert cfg.beyond_lengths == (12288,) and cfg.factor == 4.0
    assert cfg.rope_scaling() == {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
