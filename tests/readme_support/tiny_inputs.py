"""Tiny stand-ins for the README's big inputs: a Llama-3-like HF directory and a jsonl.gz corpus.

`models/Meta-Llama-3-8B` becomes a 2-layer, width-64 random `LlamaForCausalLM` with the Llama-3 traits the README
commands rely on (rope_theta 500000, a byte-level BPE tokenizer.json with `<|begin_of_text|>`, `<|end_of_text|>`
and `<|eot_id|>`), and `data/slimpajama/*.jsonl.gz` becomes two gzipped shards of the demo's synthetic corpus.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from megatron_endprompt.demo_corpus import CorpusConfig, generate_documents

SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")
"""Llama-3's special tokens that the README's commands name (EOD and the `@token:<|eot_id|>` cue)."""
TOKENIZER_VOCAB = 1024
"""Byte-level BPE vocabulary of the stand-in tokenizer (256 bytes + merges + specials); large enough that the
long-context tasks' instructions fit the README test's eval lengths."""
MODEL_VOCAB = 1024
"""vocab_size of the stand-in model's config.json; must be >= TOKENIZER_VOCAB."""
BASE_CONTEXT = 128
"""max_position_embeddings of the stand-in base model (Llama-3-8B's 8192, scaled like --seq-length)."""


def corpus_documents(num_documents: int, seed: int = 0) -> list[str]:
    """Stories and retrieval documents from the demo's generator (deterministic in `seed`)."""
    return list(generate_documents(CorpusConfig(documents=num_documents, max_words=60, seed=seed)))


def write_jsonl_gz_shards(out_dir: Path, documents: list[str], num_shards: int = 2) -> list[Path]:
    """Split `documents` round-robin into `num_shards` files `part-XXXXX.jsonl.gz` of `{"text": ...}` lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        path = out_dir / f"part-{shard:05d}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for doc in documents[shard::num_shards]:
                f.write(json.dumps({"text": doc}) + "\n")
        paths.append(path)
    return paths


def write_llama3_like_tokenizer(out_dir: Path, texts: list[str]) -> Path:
    """Train a byte-level BPE tokenizer.json on `texts` (seconds) with Llama-3's special tokens at ids 0..2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir / "tokenizer.json"


def write_tiny_llama3(out_dir: Path, texts: list[str]) -> Path:
    """A random tiny Llama-3-like HF directory (config.json, safetensors, tokenizer) at `out_dir`; the tokenizer
    is trained on `texts` plus the eval tasks' own text, so their prompts tokenise compactly."""
    from megatron_endprompt.convert.testing import save_tiny_hf_llama
    from megatron_endprompt.eval.corpus import task_texts

    save_tiny_hf_llama(
        out_dir,
        dialect="v4",  # Llama-3-8B's config.json uses the v4 dialect (top-level rope_theta)
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        vocab_size=MODEL_VOCAB,
        max_position_embeddings=BASE_CONTEXT,
        bos_token_id=0,
        eos_token_id=1,
    )
    write_llama3_like_tokenizer(out_dir, texts + task_texts(per_task=2))
    return out_dir
