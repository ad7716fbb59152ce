"""docs/reliability.md, section "Data builder, converter and recipes": every test it cites exists in its file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Data builder, converter and recipes"


def test_every_test_cited_in_the_data_and_converter_section_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert SECTION in doc
    section = doc.split(SECTION, 1)[1].split("\n## ", 1)[0]
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", section)
    assert len(cited) >= 25, cited
    missing = []
    for fname, name in cited:
        path = ROOT / "tests" / "unit" / fname
        if not path.is_file() or not re.search(
            rf"^def {name}\(", path.read_text(encoding="utf-8"), flags=re.M
        ):
            missing.append(f"{fname}::{name}")
    assert not missing, missing
