#!/usr/bin/env python3
"""Cost of the checkpoint manifest (size + CRC32 per file): hash throughput, and save / load with and without it.

For the tiny recipe model and a ~300M-parameter LLaMA (20 layers, hidden 1024, fp32, AdamW state), in one CPU
process: a full training checkpoint is saved with `save_checkpoint` (which writes the manifest) and loaded with
`load_checkpoint` (which verifies it); the manifest's own share is timed separately on the same directory
(`build_manifest`, `verify_checkpoint`; files in the page cache, as right after a save). Also the throughput of
the standard-library checksums we could have used, on 256 MiB of random bytes. Results go to
benchmarks/results/checkpoint_verify.{json,md}.

  python benchmarks/checkpoint_verify.py [--models tiny 300m] [--repeats 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_endprompt.machine import cpu_name  # noqa: E402

MODELS = {
    "tiny": {},
    "300m": {"num_layers": 20, "hidden_size": 1024, "ffn_hidden_size": 2816, "num_attention_heads": 16,
             "num_query_groups": 8, "kv_channels": 64, "vocab_size": 32000},
}  # fmt: skip
"""Overrides of the `tiny` preset."""


def hash_throughput(mib: int = 256) -> dict[str, float]:
    """MB/s of each candidate checksum over `mib` MiB of random bytes (one pass, one thread)."""
    data = os.urandom(mib * 1024 * 1024)
    candidates = {
        "crc32": lambda: zlib.crc32(data),
        "adler32": lambda: zlib.adler32(data),
        "blake2b": lambda: hashlib.blake2b(data).digest(),
        "sha1": lambda: hashlib.sha1(data).digest(),
        "sha256": lambda: hashlib.sha256(data).digest(),
    }
    out = {}
    for name, fn in candidates.items():
        t0 = time.perf_counter()
        fn()
        out[name] = round(mib * 1.048576 / (time.perf_counter() - t0), 1)
    return out


def _engine(overrides: dict):
    from megatron_endprompt.parallel import initialize
    from megatron_endprompt.training.config import load_config
    from megatron_endprompt.training.engine import Engine

    cfg = load_config(ROOT / "examples" / "tiny_cpu.yaml", ["--training.train_steps", "1"])
    cfg.model.overrides = dict(overrides)
    cfg.validate(world_size=1)
    initialize(1, 1, 1, seed=1)
    engine = Engine(cfg, cfg.model_config())
    params = sum(p.numel() for chunk in engine.unwrapped_model() for p in chunk.parameters())
    return engine, params


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(name: str, repeats: int) -> dict:
    from megatron_endprompt.parallel import destroy
    from megatron_endprompt.training.checkpoint import load_checkpoint, save_checkpoint
    from megatron_endprompt.training.checkpoint_io import COMPLETE_MARKER, verify_checkpoint
    from megatron_endprompt.training.checkpoint_manifest import build_manifest

    engine, params = _engine(MODELS[name])
    engine.optimizer.step()  # Adam state exists as after a real step (gradients are zero)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for i in range(repeats):
            save = Path(tmp) / f"run{i}"
            t0 = time.perf_counter()
            ckpt = save_checkpoint(engine, save, 1, 0)
            t_save = time.perf_counter() - t0
            t0 = time.perf_counter()
            build_manifest(ckpt, skip=(COMPLETE_MARKER,))
            t_manifest = time.perf_counter() - t0
            t0 = time.perf_counter()
            verify_checkpoint(ckpt)
            t_verify = time.perf_counter() - t0
            t0 = time.perf_counter()
            load_checkpoint(engine, save)
            t_load = time.perf_counter() - t0
            rows.append({"save_s": t_save, "manifest_s": t_manifest, "verify_s": t_verify, "load_s": t_load,
                         "bytes": _dir_bytes(ckpt), "files": len(list(ckpt.rglob("*")))})  # fmt: skip
            shutil.rmtree(save)
    destroy()
    best = {k: min(r[k] for r in rows) for k in ("save_s", "manifest_s", "verify_s", "load_s")}
    size = rows[0]["bytes"]
    return {
        "model": name,
        "parameters": params,
        "checkpoint_bytes": size,
        "files": rows[0]["files"],
        **{k: round(v, 3) for k, v in best.items()},
        "manifest_share_of_save": round(best["manifest_s"] / best["save_s"], 3),
        "verify_share_of_load": round(best["verify_s"] / best["load_s"], 3),
        "verify_mb_per_s": round(size / 1e6 / best["verify_s"], 1),
        "runs": rows,
    }


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint_verify.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Checkpoint manifest cost (size + CRC32 per file)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}  ",
        f"Load: {results['load_note']}",
        "",
        "Checksum throughput, one thread, 256 MiB in memory (MB/s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in results["hash_mb_per_s"].items()),
        "",
        "| model | parameters | checkpoint | save (s) | of which manifest (s) | load (s) | of which verify (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["models"]:
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['checkpoint_bytes'] / 1e9:.3f} GB, {r['files']} "
            f"files | {r['save_s']:.2f} | {r['manifest_s']:.2f} ({r['manifest_share_of_save']:.1%}) | "
            f"{r['load_s']:.2f} | {r['verify_s']:.2f} ({r['verify_share_of_load']:.1%}) |"
        )
    lines += [
        "",
        "Save and load are the whole `save_checkpoint` / `load_checkpoint` calls (the save includes writing the",
        "manifest, the load includes verifying it); the manifest and verify columns time those steps alone on the",
        f"same directory, best of {results['repeats']} runs, files in the page cache.",
    ]
    (out / "checkpoint_verify.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "300m"], choices=sorted(MODELS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = {
        "command": "python " + shlex.join(["benchmarks/checkpoint_verify.py", *sys.argv[1:]]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "repeats": args.repeats,
        "hash_mb_per_s": hash_throughput(),
        "models": [measure(name, args.repeats) for name in args.models],
    }
    load_after = os.getloadavg()
    results["load_note"] = (
        f"1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores "
        "(the machine was shared with other work; timings are upper bounds)"
    )
    write_results(results, args.out)
    print((args.out / "checkpoint_verify.md").read_text())


if __name__ == "__main__":
    main()
