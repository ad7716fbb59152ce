"""Data: tokenizers, the sample builder, and the readers used by training.

`load_samples(prefix, cue_loss_weight=0.1)` is the entry point for training; see docs/data_format.md.
The blended/split datasets (megatron-core, torch) are imported lazily from `megatron_endprompt.data.blended`.
"""

from megatron_endprompt.data.dataset import EndPromptSamples, load_samples, read_meta

__all__ = ["EndPromptSamples", "load_samples", "read_meta"]
