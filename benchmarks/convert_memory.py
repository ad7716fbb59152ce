#!/usr/bin/env python3
"""Peak memory of the HF <-> megatron converters on a random ~300M-parameter Llama, vs the model's bytes.

Each step runs in its own subprocess (so peaks do not mix): writing the random HF dir, importing the
libraries alone (baseline), `hf_to_megatron`, and `megatron_to_hf`. For each we record the child's peak RSS
(`ru_maxrss`, the number the kernel keeps), the largest peak among its own children (megatron's checkpoint
writer forks; forked pages are shared, so this is not additive), and the peak of the whole process tree's
summed RSS sampled every 50 ms with psutil (an upper bound: shared pages are counted twice).
Results go to benchmarks/results/convert_memory.{json,md}.

  python benchmarks/convert_memory.py [--layers 20 --hidden 1024 --ffn 2816 --vocab 32000 --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Runs in the child: do one step, then report this process's and its children's peak RSS as JSON.
CHILD = """
import json, resource, sys, time, torch
from megatron_endprompt.model.config import ModelConfig
step, work, cfg, dtype = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
start = time.time()
if step == "write":
    from megatron_endprompt.convert.testing import write_random_hf_llama
    write_random_hf_llama(f"{work}/hf", ModelConfig.from_dict(cfg), dtype=getattr(torch, dtype),
                          max_shard_bytes=512 * 1024**2)
elif step == "baseline":
    import megatron.core, megatron_endprompt.convert.hf_to_megatron, transformers  # noqa
    from megatron_endprompt.convert import megatron_io
    megatron_io.ensure_single_process_layout()
elif step == "hf_to_megatron":
    from megatron_endprompt.convert import hf_to_megatron
    hf_to_megatron(f"{work}/hf", f"{work}/megatron", overwrite=True)
elif step == "megatron_to_hf":
    from megatron_endprompt.convert import megatron_to_hf
    megatron_to_hf(f"{work}/megatron", f"{work}/hf_back", overwrite=True, max_shard_bytes=2 * 1024**3)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("RESULT " + json.dumps({"self_kib": me.ru_maxrss, "children_kib": kids.ru_maxrss, "seconds": time.time() - start}))
"""


def run_step(step: str, work: Path, cfg: dict, dtype: str) -> dict:
    """Run one step in a child process, sampling the summed RSS of its process tree."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-c", CHILD, step, str(work), json.dumps(cfg), dtype]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    root, tree_peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            tree_peak = max(tree_peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"step {step} failed with exit code {proc.returncode}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {
        "peak_rss_gib": result["self_kib"] / 1024**2,
        "children_peak_rss_gib": result["children_kib"] / 1024**2,
        "tree_rss_sum_peak_gib": tree_peak / 1024**3,
        "seconds": result["seconds"],
    }


def model_config(args: argparse.Namespace) -> dict:
    from megatron_endprompt.model.config import ModelConfig

    cfg = ModelConfig(
        num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn, num_attention_heads=args.heads,
        num_query_groups=args.kv_heads, vocab_size=args.vocab, max_position_embeddings=8192,
    )  # fmt: skip
    cfg.validate()
    return cfg.to_dict()


def num_params(cfg: dict) -> int:
    h, f, v, hd = (
        cfg["hidden_size"],
        cfg["ffn_hidden_size"],
        cfg["vocab_size"],
        cfg["hidden_size"] // cfg["num_attention_heads"],
    )
    attn = h * hd * (2 * cfg["num_attention_heads"] + 2 * cfg["num_query_groups"])
    return cfg["num_layers"] * (attn + 3 * h * f + 2 * h) + 2 * v * h + h


def write_report(record: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "convert_memory.json").write_text(json.dumps(record, indent=2) + "\n")
    gib = record["model_gib"]
    lines = [
        "# Converter peak memory",
        "",
        f"Random Llama, {record['num_params'] / 1e6:.0f}M parameters, {record['dtype']}: model bytes "
        f"{gib:.2f} GiB. Machine: {record['machine']}. Command: `{record['command']}` ({record['date']}).",
        "",
        "| step | seconds | peak RSS GiB | peak RSS - baseline, x model bytes | largest forked child GiB "
        "| tree RSS sum GiB (upper bound) |",
        "|---|---|---|---|---|---|",
    ]
    base = record["steps"]["baseline"]["peak_rss_gib"]
    for step, r in record["steps"].items():
        over = (
            f"{(r['peak_rss_gib'] - base) / gib:.2f}" if step in ("hf_to_megatron", "megatron_to_hf") else ""
        )
        lines.append(
            f"| {step} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {over} | {r['children_peak_rss_gib']:.2f} "
            f"| {r['tree_rss_sum_peak_gib']:.2f} |"
        )
    lines += ["", "baseline = a process that imports torch, megatron-core, transformers and the converter and "
              "initialises the one-rank process group, nothing else.", ""]  # fmt: skip
    (RESULTS / "convert_memory.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--workdir", default=None, help="scratch dir (default: a temp dir, deleted afterwards)")
    args = p.parse_args()
    cfg = model_config(args)
    n = num_params(cfg)
    bytes_per = 4 if args.dtype == "float32" else 2
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        steps = {s: run_step(s, Path(work), cfg, args.dtype) for s in ("write", "baseline", "hf_to_megatron",
                                                                       "megatron_to_hf")}  # fmt: skip
        written = sum(f.stat().st_size for f in Path(work, "hf").glob("*.safetensors"))
    record = {
        "num_params": n, "dtype": args.dtype, "model_gib": n * bytes_per / 1024**3,
        "safetensors_gib": written / 1024**3, "config": cfg, "steps": steps,
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
                   f"{psutil.virtual_memory().total / 1024**3:.0f} GiB RAM, Python {platform.python_version()}",
        "command": "python benchmarks/convert_memory.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip
    write_report(record)
    print((RESULTS / "convert_memory.md").read_text())


if __name__ == "__main__":
    main()
