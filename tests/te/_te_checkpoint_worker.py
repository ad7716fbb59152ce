"""2-rank gloo worker for tests/te/test_te_checkpoints.py, with the REAL Transformer Engine on CPU.

argv: OUT_DIR CONVERTED_DIR WORK_DIR. For each layout (tp, pp) in (1, 1), (2, 1), (1, 2):
- an Engine with the TE layer spec (DDP, optimizer: the route of `--model.use_te true`) loads the converted
  checkpoint as `--checkpoint.init_from` does (`load_checkpoint(..., weights_only=True)`);
- a local-spec model loads the same checkpoint; every TE parameter must equal its local counterpart exactly
  (the fused layernorm weights against the local norms), and the fused norm weights also the HF norms.
At (1, 1) the TE engine then "trains" (its weights are perturbed, as a step would) and saves with the
training save path -> WORK_DIR/te_run (a TE-spec checkpoint with `_extra_state`), and rank 0 writes the TE
model's parameters to WORK_DIR/te_params.safetensors for the parent's checks of the HF export.
Writes OUT_DIR/rank{r}.json (see tests/distributed/_launch.py).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch  # noqa: I001 - before transformer_engine
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))  # te_support beside this file
from te_support import compare_parameters, te_on_cpu  # noqa: E402

LAYOUTS = {"tp1pp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}


def _train_config(converted: Path):
    from megatron_endprompt.training.config import from_dict

    cfg = from_dict(
        {
            "model": {"config_file": str(converted / "endprompt_model.json"), "use_te": True},
            "precision": {"dtype": "fp32"},
            "optimizer": {"lr": 1e-3, "warmup_steps": 0},
            "data": {"seq_length": 16, "micro_batch_size": 1, "global_batch_size": 2, "mock": True},
            "training": {"train_steps": 1},
        }
    )
    return cfg


def _te_module_count(model: torch.nn.Module) -> int:
    from transformer_engine.pytorch.module.base import TransformerEngineBaseModule

    return sum(isinstance(m, TransformerEngineBaseModule) for m in model.modules())


def _norms_against_hf(te_model, hf: dict) -> list[str]:
    """Fused layernorm weights of this stage's layers and the final norm, against the HF tensors."""
    bad = []
    for layer in te_model.decoder.layers:
        i = layer.layer_number - 1
        pairs = {
            f"model.layers.{i}.input_layernorm.weight": layer.self_attention.linear_qkv.layer_norm_weight,
            f"model.layers.{i}.post_attention_layernorm.weight": layer.mlp.linear_fc1.layer_norm_weight,
        }
        bad += [k for k, p in pairs.items() if not torch.equal(hf[k], p.detach())]
    final = getattr(te_model.decoder, "final_layernorm", None)
    if final is not None and not torch.equal(hf["model.norm.weight"], final.weight.detach()):
        bad.append("model.norm.weight")
    return bad


def _check_layout(name: str, tp: int, pp: int, converted: Path, hf: dict) -> tuple[dict, object]:
    from megatron_endprompt.model.gpt import build_model
    from megatron_endprompt.parallel import initialize
    from megatron_endprompt.training.checkpoint import load_checkpoint
    from megatron_endprompt.training.engine import Engine

    initialize(tp=tp, pp=pp, cp=1, seed=1234)
    cfg = _train_config(converted)
    cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel = tp, pp
    with te_on_cpu():
        engine = Engine(cfg)
        load_checkpoint(engine, converted, weights_only=True)
    te_model = engine.unwrapped_model()[0]
    local = build_model(engine.model_config, use_te=False)
    local_engine = type("Chunks", (), {"unwrapped_model": lambda self: [local], "model_config": None})()
    from megatron_endprompt.training.checkpoint import _load_model

    _load_model(local_engine, converted)
    result = {
        "te_modules": _te_module_count(te_model),
        "extra_state_keys": sum(k.endswith("_extra_state") for k in te_model.sharded_state_dict()),
        "norms_vs_hf": _norms_against_hf(te_model, hf),
        **compare_parameters(te_model, local),
    }
    return result, engine


def _train_and_save(engine, work: Path) -> dict:
    """Perturb the TE model's weights (as a step would) and save with the training save path."""
    from safetensors.torch import save_file

    from megatron_endprompt.training.checkpoint import save_checkpoint

    te_model = engine.unwrapped_model()[0]
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in te_model.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    engine.optimizer.reload_model_params()
    with te_on_cpu():
        save_checkpoint(engine, work / "te_run", iteration=1, consumed_samples=0)
    if dist.get_rank() == 0:
        params = {n: p.detach().contiguous() for n, p in te_model.named_parameters()}
        save_file(params, str(work / "te_params.safetensors"))
    dist.barrier()
    return {"saved": str(work / "te_run")}


def main(out: Path, converted: Path, work: Path, hf_dir: Path) -> dict:
    from safetensors.torch import load_file

    hf = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        hf.update(load_file(str(file)))
    results = {}
    for name, (tp, pp) in LAYOUTS.items():
        results[name], engine = _check_layout(name, tp, pp, converted, hf)
        if name == "tp1pp1":
            results["save"] = _train_and_save(engine, work)
    return results


if __name__ == "__main__":
    out_dir, converted_dir, work_dir, hf_src = (Path(a) for a in sys.argv[1:5])
    try:
        res = main(out_dir, converted_dir, work_dir, hf_src)
    except Exception:  # noqa: BLE001 - reported to the parent
        res = {"error": traceback.format_exc()}
    rank = dist.get_rank() if dist.is_initialized() else int(__import__("os").environ.get("RANK", 0))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(res, indent=1))
