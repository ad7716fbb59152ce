"""Training: configuration (`config`), the loop (`loop`), engine/checkpoints, logging, FLOPs and memory estimates.

Entry point: `python -m megatron_endprompt.train --config RECIPE.yaml [--section.key value ...]` (docs/training.md).
Submodules are imported explicitly; this package imports nothing heavy.
"""
