"""megatron-endprompt: extend LLaMA context windows with EndPrompt on megatron-core.

`load_model` is imported lazily: `import megatron_endprompt` stays cheap (megatron.core takes seconds to import).
"""

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def __getattr__(name: str):
    if name == "load_model":
        from megatron_endprompt.convert.loading import load_model

        return load_model
    raise AttributeError(f"module 'megatron_endprompt' has no attribute {name!r}")
