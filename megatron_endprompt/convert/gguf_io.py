"""GGUF import: a llama-architecture GGUF file (any quantization transformers can dequantize) -> our checkpoint.

transformers reads GGUF (`from_pretrained(dir, gguf_file=name)`, needing the `gguf` and `accelerate` packages) and
dequantizes every tensor. Its `save_pretrained` refuses a GGUF-loaded model, so the weights move into a plain
`LlamaForCausalLM` built from the same config (without the GGUF `quantization_config`), which is written with
the file's tokenizer as an ordinary HF directory; `hf_to_megatron` converts that. The tokenizer therefore lands in
the checkpoint's hf_assets/ like any HF conversion's, and source.json names the GGUF file.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from megatron_endprompt.convert.errors import ConversionError

logger = logging.getLogger(__name__)

GGUF_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""Values of `--dtype` with `--gguf-file`: the dtype the dequantized weights are stored in."""


def _check_inputs(gguf_file: Path, dtype: str) -> None:
    if not gguf_file.is_file():
        raise ConversionError(f"--gguf-file: {gguf_file} does not exist or is not a file")
    if dtype not in GGUF_DTYPES:
        raise ConversionError(f"--dtype: {dtype!r} is not one of {sorted(GGUF_DTYPES)}")
    for package in ("gguf", "accelerate"):
        try:
            __import__(package)
        except ImportError:
            raise ConversionError(
                f"--gguf-file needs the {package!r} package (transformers reads GGUF through it): "
                "pip install 'megatron-endprompt[gguf]'"
            ) from None


def gguf_to_hf_dir(gguf_file: str | Path, hf_dir: str | Path, dtype: str = "float32") -> None:
    """Dequantize `gguf_file` through transformers into a plain HF LLaMA directory (weights + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_file, hf_dir = Path(gguf_file), Path(hf_dir)
    _check_inputs(gguf_file, dtype)
    torch_dtype = GGUF_DTYPES[dtype]
    where, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch_dtype)
    config = loaded.config
    if config.model_type != "llama":
        raise ConversionError(
            f"--gguf-file: {gguf_file} holds a {config.model_type!r} model; only the llama architecture converts"
        )
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain tensors now
    plain = LlamaForCausalLM(config).to(torch_dtype).eval()
    plain.load_state_dict(loaded.state_dict())
    del loaded
    plain.save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(hf_dir)
    logger.info("dequantized %s to %s (%s)", gguf_file, hf_dir, dtype)


def gguf_to_megatron(
    gguf_file: str | Path,
    megatron_dir: str | Path,
    dtype: str = "float32",
    tp: int = 1,
    pp: int = 1,
    *,
    overwrite: bool = False,
    progress: bool = False,
):
    """Convert a GGUF file into a megatron checkpoint dir through a temporary HF directory next to the output.

    Returns `hf_to_megatron`'s ConversionSummary; source.json records the GGUF file and the dtype asked for.
    """
    from megatron_endprompt.convert import hf_to_megatron, megatron_io
    from megatron_endprompt.convert.staging import refuse_overwriting_input

    gguf_file, megatron_dir = Path(gguf_file), Path(megatron_dir)
    _check_inputs(gguf_file, dtype)
    if overwrite:
        refuse_overwriting_input(megatron_dir, "--megatron-dir", {"--gguf-file": gguf_file})
    megatron_dir.parent.mkdir(parents=True, exist_ok=True)
    # next to the output (same disk), not /tmp: a dequantized model can be several GB
    with tempfile.TemporaryDirectory(prefix=".gguf_hf_", dir=megatron_dir.parent) as tmp:
        gguf_to_hf_dir(gguf_file, tmp, dtype)
        summary = hf_to_megatron(tmp, megatron_dir, tp=tp, pp=pp, overwrite=overwrite, progress=progress)
    source_path = megatron_dir / megatron_io.SOURCE_JSON
    source = json.loads(source_path.read_text())
    source["source"] = {"kind": "gguf", "path": str(gguf_file.absolute()), "dtype": dtype}
    megatron_io.write_json(source_path, source)
    return summary
