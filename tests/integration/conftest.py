"""The integration tier: tests that start other processes (a CLI, a script, the demo, the README's commands, the
Dockerfile's steps, `make -n`, `git`). Every test collected under this folder is marked `integration`, so that
`pytest -m "not integration"` runs the in-process tiers alone."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
