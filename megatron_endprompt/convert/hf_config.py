"""Hugging Face `config.json` <-> `ModelConfig`, in both of transformers' RoPE config dialects.

- dialect `v4` (released Llama checkpoints, transformers < 5): top-level `rope_theta` and a `rope_scaling`
  block (or null) whose type sits under `rope_type` (or the older `type`);
- dialect `v5` (transformers >= 5): one `rope_parameters` block with `rope_type` and `rope_theta` inside.

HF rope types map to ours as: default -> none, linear -> linear, yarn -> yarn, llama3 -> llama3. HF `dynamic`
(dynamic NTK) is refused: it rescales at inference time from the current sequence length, which a trained
checkpoint cannot reproduce. Our `ntk` is STATIC NTK (base' = base * factor^(d/(d-2))); HF has no such type,
so it is exported as `default` with the scaled `rope_theta` (identical angles) plus an `endprompt_rope_scaling`
note, which the importer reads to restore `ntk`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_endprompt.convert.errors import ConversionError
from megatron_endprompt.model.config import ModelConfig, RopeScaling

logger = logging.getLogger(__name__)

Dialect = Literal["v4", "v5"]
DIALECTS: tuple[str, ...] = ("v4", "v5")
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("LlamaForCausalLM",)
NTK_NOTE_KEY = "endprompt_rope_scaling"

# config.json keys this module writes from ModelConfig; every other key is carried through unchanged.
_OWNED_KEYS = frozenset(
    {
        "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "head_dim",
        "tie_word_embeddings", "initializer_range", "rope_theta", "rope_scaling", "rope_parameters",
        "hidden_act", "attention_bias", "mlp_bias", "torch_dtype", "dtype", "transformers_version", NTK_NOTE_KEY,
    }
)  # fmt: skip
_HF_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048}


@dataclass(frozen=True)
class HFSource:
    """What `config.json` said beyond `ModelConfig`, kept so that the export writes it back the same way."""

    dialect: str = "v4"
    """RoPE config dialect that was read (`v4` or `v5`); the export writes the same one."""
    rope_type_key: str = "rope_type"
    """v4 only: whether the rope_scaling block named its type `rope_type` or the older `type`."""
    torch_dtype: str | None = None
    """Declared weight dtype (`torch_dtype` in v4, `dtype` in v5), e.g. "bfloat16"."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other config.json keys (token ids, use_cache, ...), copied back verbatim."""

    def to_dict(self) -> dict:
        return {
            "dialect": self.dialect,
            "rope_type_key": self.rope_type_key,
            "torch_dtype": self.torch_dtype,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> HFSource:
        data = dict(data or {})
        known = {"dialect", "rope_type_key", "torch_dtype", "extra"}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_hf_config(hf_dir: str | Path) -> tuple[ModelConfig, HFSource]:
    """Parse `<hf_dir>/config.json` into a validated ModelConfig and the source details."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"--hf-dir: no config.json in {hf_dir}")
    with open(path) as f:
        raw = json.load(f)
    return parse_hf_config(raw, source=str(path))


def _check_architecture(raw: dict, source: str) -> None:
    archs = raw.get("architectures")
    if archs is None:
        if raw.get("model_type") != "llama":
            raise ConversionError(
                f"{source}: no `architectures` and model_type={raw.get('model_type')!r}; "
                f"only {list(SUPPORTED_ARCHITECTURES)} (model_type 'llama') can be converted"
            )
    elif list(archs) != list(SUPPORTED_ARCHITECTURES):
        raise ConversionError(
            f"{source}: unsupported architectures={archs!r}; only {list(SUPPORTED_ARCHITECTURES)} can be converted"
        )
    for key, ok in (
        ("hidden_act", ("silu", None)),
        ("attention_bias", (False, None)),
        ("mlp_bias", (False, None)),
    ):
        if raw.get(key) not in ok:
            raise ConversionError(
                f"{source}: {key}={raw.get(key)!r} is not supported (LLaMA needs {ok[0]!r})"
            )
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(
            f"{source}: partial_rotary_factor={raw['partial_rotary_factor']} is not supported"
        )


def parse_hf_config(raw: dict, source: str = "config.json") -> tuple[ModelConfig, HFSource]:
    """ModelConfig and HFSource from a config.json dict (either dialect); raises ConversionError."""
    _check_architecture(raw, source)
    dialect = "v5" if raw.get("rope_parameters") is not None else "v4"
    if dialect == "v5":
        block = dict(raw["rope_parameters"])
        theta = block.pop("rope_theta", raw.get("rope_theta", _HF_DEFAULTS["rope_theta"]))
        type_key = "rope_type"
    else:
        block = dict(raw.get("rope_scaling") or {})
        theta = raw.get("rope_theta", _HF_DEFAULTS["rope_theta"])
        type_key = "type" if ("type" in block and "rope_type" not in block) else "rope_type"
    heads = raw["num_attention_heads"]
    max_pos = int(raw.get("max_position_embeddings", _HF_DEFAULTS["max_position_embeddings"]))
    head_dim = raw.get("head_dim")
    try:
        block_name = "rope_parameters" if dialect == "v5" else "rope_scaling"
        scaling, theta = _rope_from_hf(block, float(theta), max_pos, raw, source, block_name)
        cfg = ModelConfig(
            num_layers=raw["num_hidden_layers"],
            hidden_size=raw["hidden_size"],
            ffn_hidden_size=raw["intermediate_size"],
            num_attention_heads=heads,
            num_query_groups=raw.get("num_key_value_heads") or heads,
            vocab_size=raw["vocab_size"],
            max_position_embeddings=max_pos,
            rope_theta=theta,
            rope_scaling=scaling,
            norm_eps=float(raw.get("rms_norm_eps", _HF_DEFAULTS["rms_norm_eps"])),
            kv_channels=head_dim if head_dim and head_dim != raw["hidden_size"] // heads else None,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            init_method_std=float(raw.get("initializer_range", 0.02)),
        )
        cfg.validate()
    except KeyError as e:
        raise ConversionError(f"{source}: missing required key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{source}: {e}") from None
    extra = {k: v for k, v in raw.items() if k not in _OWNED_KEYS}
    hf_source = HFSource(dialect, type_key, raw.get("torch_dtype") or raw.get("dtype"), extra)
    return cfg, hf_source


# Keys an HF rope block may hold per rope type, (required, optional), besides the type key itself
# (`rope_type`, or the older `type`) and `partial_rotary_factor`. Optional keys we read have defaults below; a
# key in neither set is refused, so that a misspelling (e.g. `rope_tpye`, `factr`) cannot silently change RoPE.
_ROPE_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "default": (frozenset(), frozenset()),
    "linear": (frozenset({"factor"}), frozenset()),
    "llama3": (
        frozenset({"factor"}),
        frozenset({"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}),
    ),
    "yarn": (
        frozenset(),
        frozenset(
            "factor original_max_position_embeddings beta_fast beta_slow attention_factor mscale mscale_all_dim "
            "truncate".split()
        ),
    ),
}
_ROPE_ALWAYS_ALLOWED = frozenset({"rope_type", "type", "partial_rotary_factor"})


def _check_rope_keys(kind: str, block: dict, block_name: str, source: str) -> None:
    """Name unknown and missing keys of a supported rope type's block."""
    required, optional = _ROPE_KEYS[kind]
    unknown = sorted(set(block) - required - optional - _ROPE_ALWAYS_ALLOWED)
    if unknown:
        allowed = sorted(required | optional | {"rope_type"})
        raise ConversionError(
            f"{source}: {block_name}: unknown key(s) {unknown} for rope type {kind!r} "
            f"(allowed: {allowed}); a misspelt key would silently change RoPE"
        )
    missing = sorted(k for k in required if block.get(k) is None)
    if missing:
        raise ConversionError(f"{source}: {block_name}: rope type {kind!r} needs key(s) {missing}")
    if block.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(
            f"{source}: {block_name}: partial_rotary_factor={block['partial_rotary_factor']} is not supported"
        )


def _rope_from_hf(
    block: dict, theta: float, max_pos: int, raw: dict, source: str, block_name: str = "rope_scaling"
) -> tuple[RopeScaling, float]:
    """Our RopeScaling (and rope_theta) from an HF rope block without `rope_theta`."""
    kind = block.get("rope_type", block.get("type", "default"))
    factor = block.get("factor")
    if kind in _ROPE_KEYS:
        _check_rope_keys(kind, block, block_name, source)
    if kind == "default":
        note = raw.get(NTK_NOTE_KEY)
        if note and note.get("type") == "ntk":
            return _restore_ntk(note, theta, raw, source)
        return RopeScaling(), theta
    if kind == "linear":
        return RopeScaling(type="linear", factor=float(factor)), theta
    if kind == "dynamic":
        raise ConversionError(
            f"{source}: rope type 'dynamic' (dynamic NTK) is an inference-time rule that rescales RoPE from "
            "the current sequence length; it cannot be trained with. Convert with rope type default and set "
            "model.rope_scaling in the training recipe (e.g. type=ntk for static NTK, or yarn/linear)"
        )
    if kind == "llama3":
        return RopeScaling(
            type="llama3",
            factor=float(factor),
            low_freq_factor=float(block.get("low_freq_factor", 1.0)),
            high_freq_factor=float(block.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(block.get("original_max_position_embeddings") or max_pos),
        ), theta
    if kind == "yarn":
        original = int(block.get("original_max_position_embeddings") or max_pos)
        return RopeScaling(
            type="yarn",
            factor=float(factor) if factor is not None else max_pos / original,
            original_max_position_embeddings=original,
            beta_fast=float(block.get("beta_fast") or 32.0),
            beta_slow=float(block.get("beta_slow") or 1.0),
            attention_factor=_opt_float(block.get("attention_factor")),
            mscale=_opt_float(block.get("mscale")),
            mscale_all_dim=_opt_float(block.get("mscale_all_dim")),
            truncate=bool(block.get("truncate", True)),
        ), theta
    raise ConversionError(
        f"{source}: unsupported rope type {kind!r}; supported: default, linear, yarn, llama3 "
        f"(and our static ntk, exported as default with a scaled rope_theta)"
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def ntk_scaled_theta(theta: float, factor: float, head_dim: int) -> float:
    """Static NTK-aware base change base * factor^(d/(d-2)), the exact expression model/rope.py uses."""
    return theta * factor ** (head_dim / (head_dim - 2))


def _restore_ntk(note: dict, theta: float, raw: dict, source: str) -> tuple[RopeScaling, float]:
    """Undo the ntk export when the note matches the rope_theta in the file (else trust rope_theta alone)."""
    head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    base, factor = float(note["rope_theta"]), float(note["factor"])
    if not math.isclose(ntk_scaled_theta(base, factor, head_dim), theta, rel_tol=1e-12):
        logger.warning("%s: %s does not match rope_theta=%s; ignoring it", source, NTK_NOTE_KEY, theta)
        return RopeScaling(), theta
    return RopeScaling(type="ntk", factor=factor), base


def _rope_to_hf(cfg: ModelConfig) -> tuple[float, dict | None, dict | None]:
    """(rope_theta, HF rope block without rope_theta or None for default, ntk note or None)."""
    rs = cfg.rope_scaling
    if rs.type == "none":
        return cfg.rope_theta, None, None
    if rs.type == "ntk":
        theta = ntk_scaled_theta(cfg.rope_theta, rs.factor, cfg.head_dim)
        logger.info(
            "static NTK has no HF rope type: writing rope_type default with rope_theta=%s (= %s * %s^(d/(d-2)))",
            theta, cfg.rope_theta, rs.factor,
        )  # fmt: skip
        note = {"type": "ntk", "factor": rs.factor, "rope_theta": cfg.rope_theta}
        return theta, None, note
    if rs.type == "linear":
        return cfg.rope_theta, {"rope_type": "linear", "factor": rs.factor}, None
    if rs.type == "llama3":
        block = {
            "rope_type": "llama3",
            "factor": rs.factor,
            "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": int(rs.original_max_position_embeddings),
        }
        return cfg.rope_theta, block, None
    if rs.type == "yarn":
        block = {
            "rope_type": "yarn",
            "factor": rs.factor,
            "original_max_position_embeddings": int(rs.original_max_position_embeddings),
            "beta_fast": rs.beta_fast,
            "beta_slow": rs.beta_slow,
            "truncate": rs.truncate,
        }
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(rs, key) is not None:
                block[key] = getattr(rs, key)
        return cfg.rope_theta, block, None
    raise ConversionError(f"model.rope_scaling.type={rs.type!r} cannot be exported to HF")


def build_hf_config(cfg: ModelConfig, source: HFSource | None = None, torch_dtype: str | None = None) -> dict:
    """config.json dict for `cfg` in `source.dialect` (default v4), carrying `source.extra` through."""
    source = source or HFSource()
    if source.dialect not in DIALECTS:
        raise ConversionError(f"--hf-dialect: unknown dialect {source.dialect!r}; choose one of {DIALECTS}")
    out: dict[str, Any] = {"architectures": list(SUPPORTED_ARCHITECTURES), "model_type": "llama"}
    out.update(source.extra)
    out.update(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.init_method_std,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )
    theta, block, note = _rope_to_hf(cfg)
    if source.dialect == "v5":
        out["rope_parameters"] = {**(block or {"rope_type": "default"}), "rope_theta": theta}
    else:
        out["rope_theta"] = theta
        if block is not None and source.rope_type_key == "type":
            block = {"type": block.pop("rope_type"), **block}
        out["rope_scaling"] = block
    if note is not None:
        out[NTK_NOTE_KEY] = note
    dtype = torch_dtype or source.torch_dtype
    if dtype is not None:
        out["dtype" if source.dialect == "v5" else "torch_dtype"] = dtype
    return out
