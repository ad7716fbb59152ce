"""benchmarks/train_throughput.py in process: a failing case fails only itself, the default cases and their layer
specs, the time budget. The --smoke run of the whole script: tests/integration/test_train_throughput_smoke.py."""

import json
from pathlib import Path

import pytest

from megatron_endprompt.model.config import get_preset


class KernelCompileError(Exception):
    """Stands in for triton's CompilationError: an Exception that is neither RuntimeError nor ValueError."""


def test_any_exception_fails_only_its_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from benchmarks import train_throughput as tt

    real_build = tt.build

    def build(impl, cfg, dtype, device, use_te, case=None):
        if case is not None and case.name == "broken":
            raise KernelCompileError("at 3:4: unsupported layout\n(traceback of the kernel)")
        return real_build(impl, cfg, dtype, device, use_te, case)

    monkeypatch.setattr(tt, "build", build)
    cfg = get_preset("tiny").replace(max_position_embeddings=64)
    args = tt.parse_args(["--out", str(tmp_path), "--steps", "1", "--warmup", "0", "--dtype", "fp32"])
    device = torch.device("cpu")
    cases = [tt.Case("broken", "reference", 16, 1), tt.Case("after", "reference", 16, 1)]
    results = tt.run_cases(cases, cfg, args, device, tt._meta(args, cfg, device))
    assert [r.status for r in results] == ["error: KernelCompileError: at 3:4: unsupported layout", "ok"]
    written = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["status"] for r in written] == [r.status for r in results]


def test_default_cases_label_and_force_their_layer_spec() -> None:
    """With TE, local and TE cases run side by side; SDPA-backend cases always force the local spec."""
    from benchmarks.train_throughput import default_cases

    local = default_cases(8192, 65536, ("local",))
    both = {c.name: c for c in default_cases(8192, 65536, ("local", "te"))}
    assert all(c.spec in ("local", "-") for c in local)
    assert {n for n, c in both.items() if c.spec == "te"} == {
        "ep8k_b1_te", "contig8k_b1_te", "upstream8k_b1_te", "ep8k_b1_ce_te", "full64k_b1_ce_te",
        "engine_ep8k_b1_te", "ep8k_b8_ce_te",
    }  # fmt: skip
    assert {c.name for c in local} == {n for n, c in both.items() if c.spec != "te"}
    assert all(c.spec == "local" for c in both.values() if c.backend != "default")
    assert all(c.spec == "-" for c in both.values() if c.impl == "reference")
    assert all(c.ce_chunk for c in both.values() if c.seq_length * c.batch >= 65536)


def test_budget_records_unstarted_cases_as_skipped(tmp_path: Path) -> None:
    import torch

    from benchmarks import train_throughput as tt

    cfg = get_preset("tiny")
    args = tt.parse_args(["--out", str(tmp_path), "--budget-s", "-1"])
    device = torch.device("cpu")
    cases = [tt.Case("a", "reference", 16, 1), tt.Case("b", "ours", 16, 1)]
    results = tt.run_cases(cases, cfg, args, device, tt._meta(args, cfg, device))
    assert [r.status for r in results] == ["skipped: --budget-s -1 spent"] * 2
    assert "| b | ours | local |" in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit, match="--specs"):
        tt.resolve_specs("local,tee")
