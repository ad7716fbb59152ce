"""Worker for test_layouts.py: one 2-rank gloo launch that trains the same tiny model under many layouts.

Usage: torchrun --nproc_per_node 2 tests/distributed/_layout_worker.py OUT_DIR [HF_DIR]
Rank 0 writes OUT_DIR/results.json; the pytest process asserts on it. HF_DIR is where `_hf_reference.py`
(running concurrently) publishes an HF-converted checkpoint; the worker loads it at TP=2 at the end.

The single-rank reference runs in the same launch without a second process group: at layout tp=pp=cp=1
(DP=2) rank 0 gets ALL micro-batches and rank 1 gets copies with every loss weight 0. Rank 1 then adds exact
zeros to the gradient all-reduce and to the loss sums, so every number is rank 0's single-device computation.
Every layout starts from the same weights, loaded from a checkpoint saved at the reference layout.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from megatron_endprompt.parallel import initialize
from megatron_endprompt.training.checkpoint import load_checkpoint, save_checkpoint
from megatron_endprompt.training.config import TrainConfig
from megatron_endprompt.training.engine import Engine

sys.path.insert(0, str(Path(__file__).parent))
from _batches import make_batches, weighted_loss_from_logits  # noqa: E402

STEPS = 3
HF_WAIT_S = 150


class Layout(NamedTuple):
    tp: int = 1
    pp: int = 1
    cp: int = 1
    vp: int | None = None
    sequence_parallel: bool = False
    distopt: bool = False
    overlap: bool = False
    """Overlapped grad reduce and param gather."""
    dtype: str = "fp32"
    initial_loss_scale: float = 2.0**16
    tied: bool = False
    """Tied input/output embeddings (compared with their own tied reference)."""


LAYOUTS = {
    "dp2": Layout(),
    "dp2_distopt": Layout(distopt=True),
    "dp2_distopt_overlap": Layout(distopt=True, overlap=True),
    "tp2": Layout(tp=2),
    "tp2_sp": Layout(tp=2, sequence_parallel=True),
    "pp2": Layout(pp=2),
    "pp2_vp2": Layout(pp=2, vp=2),
    "cp2": Layout(cp=2),
    "bf16_distopt": Layout(distopt=True, dtype="bf16"),
    "fp16_tp2": Layout(tp=2, dtype="fp16"),
    "fp16_dp2": Layout(dtype="fp16"),
    "fp16_overflow": Layout(dtype="fp16", initial_loss_scale=2.0**100),  # every step overflows
    "tied_reference": Layout(tied=True),  # run as the single-rank reference of the tied model
    "pp2_tied": Layout(pp=2, tied=True),
}
TIED = ("pp2_tied",)
MIXED = ("bf16_distopt", "fp16_tp2", "fp16_dp2")
"""Mixed-precision layouts: compared with the fp32 reference loosely, and with their own resumed run exactly."""
NUM_LAYERS = 4
"""The tiny preset with 4 layers, so that PP=2 x VP=2 has a layer per chunk."""


SAVE_AFTER_FIRST_STEP = {
    "tp2": "tp2",
    "pp2": "pp2",
    "pp2_vp2": "vp2",
    "dp2_distopt": "distopt",
    "dp2_distopt_overlap": "overlap",
    "bf16_distopt": "bf16",
    "fp16_tp2": "fp16",
}
"""Layouts that also write a full checkpoint after their first step (into this subdirectory)."""
RESUMES = {
    "tp2_to_tp1": ("dp2", "tp2"),
    "pp2_to_pp1": ("dp2", "pp2"),
    "vp2_to_pp1": ("dp2", "vp2"),
    "dp2_distopt": ("dp2_distopt", "distopt"),
    "overlap_to_distopt": ("dp2_distopt", "overlap"),
    "bf16_distopt": ("bf16_distopt", "bf16"),
    "fp16_tp2_to_tp1": ("fp16_dp2", "fp16"),
}
"""Resume check name -> (layout to load at, checkpoint subdirectory)."""


def make_config(layout: Layout, model_json: Path | None = None) -> TrainConfig:
    cfg = TrainConfig()
    if model_json is None:
        cfg.model.preset = "tiny"
        cfg.model.overrides = {"num_layers": NUM_LAYERS, "tie_word_embeddings": layout.tied}
    else:
        cfg.model.config_file = str(model_json)
    cfg.model.use_te = False
    cfg.precision.dtype, cfg.precision.initial_loss_scale = layout.dtype, layout.initial_loss_scale
    p = cfg.parallel
    p.tensor_parallel, p.pipeline_parallel, p.context_parallel = layout.tp, layout.pp, layout.cp
    p.virtual_pipeline_parallel, p.sequence_parallel = layout.vp, layout.sequence_parallel
    cfg.optimizer.lr, cfg.optimizer.warmup_steps, cfg.optimizer.weight_decay = 3e-3, 2, 0.1
    cfg.optimizer.use_distributed_optimizer = layout.distopt
    cfg.optimizer.overlap_grad_reduce = cfg.optimizer.overlap_param_gather = layout.overlap
    cfg.training.train_steps = STEPS
    return cfg


def engine_at(name: str, init: Path | None, model_json: Path | None = None) -> Engine:
    layout = LAYOUTS[name]
    initialize(layout.tp, layout.pp, layout.cp, seed=1234, vp=layout.vp)
    engine = Engine(make_config(layout, model_json=model_json))
    if init is not None:
        load_checkpoint(engine, init, weights_only=True)
    return engine


def share(batches: list[dict], dp_size: int, reference: bool = False) -> list[dict]:
    """This rank's micro-batches: DP ranks split them; the reference gives rank 1 zero-weight copies."""
    from megatron.core import parallel_state

    if reference:
        if dist.get_rank() == 0:
            return batches
        return [{**mb, "loss_weights": torch.zeros_like(mb["loss_weights"])} for mb in batches]
    if dp_size == 1:
        return batches
    return batches[parallel_state.get_data_parallel_rank() :: dp_size]


def curve(engine: Engine, batches: list[dict], reference: bool = False, save_at: tuple | None = None) -> dict:
    """STEPS training steps; optionally save a full checkpoint after step save_at[0] into save_at[1]."""
    mine = share(batches, _dp(), reference)
    steps, rng_after_save = [], None
    for i in range(STEPS):
        if save_at is not None and i == save_at[0]:
            rng_probe()  # advance every stream, so that only a restore can reproduce the next draws
            save_checkpoint(engine, save_at[1], engine.iteration, engine.consumed_samples, {"probe": i})
            rng_after_save = rng_probe()
        r = engine.train_step(mine)
        steps.append(
            {
                k: getattr(r, k)
                for k in (
                    "loss",
                    "text_loss",
                    "cue_loss",
                    "grad_norm",
                    "lr",
                    "num_tokens",
                    "skipped",
                    "iteration",
                )
            }
        )
    return {"steps": steps, "eval": engine.eval_loss(mine), "rng_after_save": rng_after_save}


def rng_probe() -> list[float]:
    """One draw from each RNG stream a checkpoint restores (python, numpy, torch, megatron's tracker)."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    with tensor_parallel.get_cuda_rng_tracker().fork():
        tracked = torch.rand(1).item()
    return [random.random(), float(np.random.rand()), torch.rand(1).item(), tracked]


def _dp() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_world_size()


def run(out_dir: Path, hf_dir: Path | None) -> dict:
    batches = make_batches()
    ckpt = out_dir / "ckpt"
    res: dict = {"layouts": {}, "resume": {}, "errors": {}, "seconds": {}}

    def timed(key: str, fn):
        t0 = time.time()
        try:
            return fn()
        except Exception:  # recorded per check so that one failure does not hide the others
            res["errors"][key] = traceback.format_exc()
            return None
        finally:
            res["seconds"][key] = round(time.time() - t0, 2)

    def reference():
        engine = engine_at("dp2", None)
        save_checkpoint(engine, ckpt / "init", 0, 0)
        return curve(engine, batches, reference=True)

    def tied_reference():
        engine = engine_at("tied_reference", None)
        save_checkpoint(engine, ckpt / "init_tied", 0, 0)
        return curve(engine, batches, reference=True)

    res["reference"] = timed("reference", reference)
    res["tied_reference"] = timed("tied_reference", tied_reference)
    for name in LAYOUTS:
        if name == "tied_reference":
            continue
        init = ckpt / ("init_tied" if LAYOUTS[name].tied else "init")
        save = SAVE_AFTER_FIRST_STEP.get(name)
        res["layouts"][name] = timed(
            name, lambda n=name, d=save, i=init: _layout_run(n, i, batches, d and ckpt / d)
        )
    # Full resume (weights, optimizer, schedule, counters) after step 1 reproduces steps 2..STEPS, also when the
    # checkpoint was written at TP=2 or PP=2 and is read at TP=PP=1 (model and optimizer state resharded).
    for name, (load_layout, directory) in RESUMES.items():
        res["resume"][name] = timed(
            f"resume_{name}", lambda a=load_layout, d=directory: _resume(a, ckpt / d, batches)
        )
    # Interchange with convert/: load_model reads a training checkpoint written at TP=2 ...
    res["load_model_tp2"] = timed("load_model_tp2", lambda: _load_model_loss(ckpt / "tp2", batches))
    # ... and training initialises at TP=2 from an HF-converted checkpoint.
    if hf_dir is not None:
        res["hf_init"] = timed("hf_init", lambda: _hf_init_loss(hf_dir, batches))
    return res


def _load_model_loss(path: Path, batches: list[dict]) -> float:
    from megatron_endprompt.convert import load_model

    initialize(1, 1, 1, seed=1234)  # load_model builds an unsharded model
    model = load_model(path)
    with torch.no_grad():
        logits = [model(mb["tokens"], mb["position_ids"]) for mb in batches]
    return weighted_loss_from_logits(logits, batches)


def _hf_init_loss(hf_dir: Path, batches: list[dict]) -> float:
    converted = hf_dir / "megatron"
    deadline = time.time() + HF_WAIT_S
    while not converted.is_dir() and time.time() < deadline:
        time.sleep(0.5)
    if not converted.is_dir():
        raise TimeoutError(f"{converted} did not appear within {HF_WAIT_S} s (see _hf_reference.py)")
    engine = engine_at("tp2", converted, model_json=converted / "endprompt_model.json")
    return engine.eval_loss(batches)


def _layout_run(name: str, init: Path, batches: list[dict], save_dir: Path | None) -> dict:
    engine = engine_at(name, init)
    return curve(engine, batches, save_at=(1, save_dir) if save_dir else None)


def _resume(name: str, path: Path, batches: list[dict]) -> dict:
    engine = engine_at(name, None)
    state = load_checkpoint(engine, path)
    rng = rng_probe()
    mine = share(batches, _dp())
    steps = []
    for _ in range(STEPS - 1):
        r = engine.train_step(mine)
        steps.append({"loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr, "iteration": r.iteration})
    return {"iteration": state["iteration"], "extra": state["extra"], "steps": steps, "rng": rng}


def main() -> None:
    out_dir = Path(sys.argv[1])
    res = run(out_dir, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, res)
    if dist.get_rank() == 0:
        (out_dir / "results.json").write_text(json.dumps({"ranks": gathered}, indent=1))
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
