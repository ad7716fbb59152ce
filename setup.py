"""Installable package for megatron-endprompt (metadata lives here; tool config in pyproject.toml)."""

from setuptools import find_packages, setup

setup(
    name="megatron-endprompt",
    version="0.1.0",
    description="Megatron-Core training fork that extends LLaMA context windows with EndPrompt",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_endprompt", "megatron_endprompt.*"]),
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16.1,<0.17",
        "numpy",
        "sentencepiece",
        "psutil",  # megatron's async checkpoint writer hangs without it
        "safetensors",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        "hf": ["transformers>=4.45", "protobuf"],  # protobuf: Llama-2 style tokenizer.model dirs
        "data": ["pyarrow", "tokenizers"],
        "plots": ["matplotlib"],
        # GGUF import (hf-to-megatron --gguf-file): transformers' GGUF loader needs both; ~0.5 MB of wheels
        "gguf": ["transformers>=4.45", "gguf", "accelerate"],
        "dev": [
            "pytest",
            "hypothesis",
            "ruff",
            "transformers>=4.45",
            "protobuf",
            "pyarrow",
            "tokenizers",
            "matplotlib",
            "gguf",  # the tiny-GGUF conversion test (tests/unit/test_convert_gguf.py)
            "accelerate",
            "triton>=3.0",  # runs the Triton RoPE kernel on CPU under its interpreter (TRITON_INTERPRET=1)
        ],
    },
)
