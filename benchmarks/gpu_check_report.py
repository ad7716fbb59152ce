"""Turn one GPU check's logs into what comes back from the machine: `summary.md` and `results.json`.

    python3 benchmarks/gpu_check_report.py LOGS_DIR OUT_DIR [--smoke]

LOGS_DIR is what `benchmarks/gpu_check.sh` wrote (steps.tsv, env.json, one log per step, throughput/,
*_metrics.jsonl); it is archived next to these two files as logs.tar.gz. Standard library only, so the report
is written even when torch or megatron-core is broken.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEP_FIELDS = ("name", "limit_s", "seconds", "exit", "status", "command")
CLI_RUNS = ("train_cli", "train_cli_fast")


def read_steps(logs: Path) -> list[dict]:
    """steps.tsv rows (one per step, in run order) as dicts of STEP_FIELDS."""
    path = logs / "steps.tsv"
    lines = path.read_text().splitlines() if path.exists() else []
    return [dict(zip(STEP_FIELDS, line.split("\t"), strict=True)) for line in lines if line.strip()]


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def cli_losses(metrics: Path) -> dict | None:
    """First and last logged training loss of one CLI run, and whether it fell."""
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    return {"first_step": first["step"], "first_loss": first["loss"], "last_step": last["step"],
            "last_loss": last["loss"], "fell": last["loss"] < first["loss"]}  # fmt: skip


def build_results(logs: Path, smoke: bool) -> dict:
    """Everything measured, in one JSON document."""
    return {
        "smoke": smoke,
        "steps": read_steps(logs),
        "env": _json(logs / "env.json"),
        "throughput": _json(logs / "throughput" / "results.json"),
        "train_cli": {run: cli_losses(logs / f"{run}_metrics.jsonl") for run in CLI_RUNS},
    }


def _env_lines(env: dict | None) -> list[str]:
    if env is None:
        return ["(environment not recorded: see env.log in logs.tar.gz)"]
    v = env.get("versions", {})
    device = "no CUDA device"
    if env.get("cuda_available"):
        device = f"{env.get('device')}, {env.get('memory_gib')} GiB; CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}"
    return [
        f"- device: {device}",
        f"- torch {v.get('torch')}, triton {v.get('triton')}, transformers {v.get('transformers')}, "
        f"megatron-core {v.get('megatron-core')}, Transformer Engine {v.get('transformer-engine') or 'absent'} "
        f"(importable: {env.get('transformer_engine_importable')})",
        f"- missing before the install step: {', '.join(env.get('missing', [])) or 'nothing'}",
    ]


def to_summary(results: dict, logs: Path) -> str:
    steps = results["steps"]
    total = sum(int(s["seconds"]) for s in steps if s["seconds"].isdigit())
    device = (results["env"] or {}).get("device", "no CUDA device")
    lines = [f"# GPU check: {device}, {total} s of steps", ""]
    if results["smoke"]:
        lines += ["CPU rehearsal (GPU_CHECK_SMOKE=1): tiny sizes; timings and verdicts mean nothing.", ""]
    lines += ["| step | limit s | took s | status | command |", "|---|---|---|---|---|"]
    lines += [
        f"| {s['name']} | {s['limit_s']} | {s['seconds']} | {s['status']} | `{s['command']}` |" for s in steps
    ]
    lines += ["", "## Environment", "", *_env_lines(results["env"]), "", "## Throughput", ""]
    table = logs / "throughput" / "results.md"
    lines.append(table.read_text() if table.exists() else "(no results: see throughput.log in logs.tar.gz)")
    for name in ("gpu_tests", "te_tests"):
        lines += [
            "",
            f"## {name} (last lines of {name}.log)",
            "",
            "```",
            _tail(logs / f"{name}.log", 15),
            "```",
        ]
    lines += [
        "",
        "## Training CLI (first and last logged loss)",
        "",
        "| run | first | last | fell |",
        "|---|---|---|---|",
    ]
    for run, loss in results["train_cli"].items():
        if loss is None:
            lines.append(f"| {run} | no metrics |  |  |")
        else:
            lines.append(f"| {run} | step {loss['first_step']}: {loss['first_loss']:.4f} | "
                         f"step {loss['last_step']}: {loss['last_loss']:.4f} | {loss['fell']} |")  # fmt: skip
    archived = sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_file())
    lines += ["", f"logs.tar.gz holds: {', '.join(archived)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--smoke"):
        raise SystemExit("usage: gpu_check_report.py LOGS_DIR OUT_DIR [--smoke]")
    logs, out = Path(argv[0]), Path(argv[1])
    results = build_results(logs, smoke=len(argv) == 3)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(to_summary(results, logs))


if __name__ == "__main__":
    main(sys.argv[1:])
