"""HF <-> megatron checkpoint conversion and single-process loading (see docs/conversion.md).

megatron-core itself is imported only inside the functions (it takes seconds), not by this package.
The functions are bound here on purpose: they shadow their same-named submodules as package attributes,
so `from megatron_endprompt.convert import hf_to_megatron` is always the function.
"""

from megatron_endprompt.convert.errors import ConversionError
from megatron_endprompt.convert.hf_to_megatron import hf_to_megatron
from megatron_endprompt.convert.loading import load_model
from megatron_endprompt.convert.megatron_to_hf import megatron_to_hf

__all__ = ["ConversionError", "hf_to_megatron", "megatron_to_hf", "load_model"]
