"""Fixtures shared by the unit tests of examples/toy_reproduction (a script directory, not a package: its
folder is on sys.path through pyproject's `pythonpath`, as it is when run.py runs as a script)."""

import importlib.util
import sys
from pathlib import Path

import pytest

TOY_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "toy_reproduction" / "run.py"


@pytest.fixture(scope="session")
def toy():
    """examples/toy_reproduction/run.py loaded as the module `toy_run`."""
    if "toy_run" not in sys.modules:
        spec = importlib.util.spec_from_file_location("toy_run", TOY_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["toy_run"] = module  # dataclasses (and pickled worker calls) look their module up there
        spec.loader.exec_module(module)
    return sys.modules["toy_run"]


@pytest.fixture(scope="session")
def report(toy):
    """The report module (`toy_report.py`)."""
    import toy_report

    return toy_report
