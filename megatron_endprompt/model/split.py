"""The model-split rule: which tensor / pipeline (/ virtual pipeline) sizes a model can be cut into.

One owner for training validation (`--parallel.*`), the HF importer (`--tp/--pp`) and the evaluator (`--tp`);
each caller passes the names its users type, so every message names that caller's own flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from megatron_endprompt.model.config import ModelConfig

TP_FIELDS = ("num_attention_heads", "num_query_groups", "ffn_hidden_size")
"""ModelConfig fields megatron shards across tensor-parallel ranks: TP must divide each."""


@dataclass(frozen=True)
class SplitNames:
    """How one caller names the sizes in its messages: format strings whose `{}` takes the value.

    tp / pp / vp: e.g. "--parallel.tensor_parallel ({})" or "--tp {}". fields: ModelConfig field ->
    format string, e.g. "the MLP width ({}, HF intermediate_size)"; a field not listed reads "model.<field> ({})".
    """

    tp: str
    pp: str
    vp: str = "virtual pipeline size ({})"
    fields: Mapping[str, str] = field(default_factory=dict)

    def describe(self, name: str, value: int) -> str:
        """The ModelConfig field `name` with its value, as this caller's users know it."""
        return self.fields.get(name, f"model.{name} ({{}})").format(value)


def split_problems(
    cfg: ModelConfig, tp: int, pp: int = 1, vp: int | None = None, *, names: SplitNames
) -> list[str]:
    """Every reason `cfg` cannot be split into TP x PP (x VP) pieces, one message each; [] when it can.

    TP must divide the attention heads, the query groups and the MLP width (megatron gives every TP rank an
    equal shard of each); PP, times VP when interleaving (vp None or 1: none), must divide the number of layers
    (equal stages) and cannot exceed it. A size below 1 is reported alone (nothing else can be checked).
    """
    sizes = [(names.tp, tp), (names.pp, pp)] + ([(names.vp, vp)] if vp is not None else [])
    errs = [f"{name.format(value)} must be >= 1" for name, value in sizes if value < 1]
    if errs:
        return errs
    for name in TP_FIELDS:
        if getattr(cfg, name) % tp:
            errs.append(f"{names.tp.format(tp)} must divide {names.describe(name, getattr(cfg, name))}")
    layers = names.describe("num_layers", cfg.num_layers)
    stages = names.pp.format(pp) + (f" x {names.vp.format(vp)}" if vp and vp > 1 else "")
    if pp > cfg.num_layers:
        errs.append(f"{names.pp.format(pp)} exceeds {layers}")
    elif cfg.num_layers % (pp * (vp or 1)):
        errs.append(f"{stages} must divide {layers}")
    return errs
