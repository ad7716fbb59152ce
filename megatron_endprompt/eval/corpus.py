"""Task-shaped text for training small tokenizers (tests, demo), made without any tokenizer of our own.

Prompts are generated with a byte-level stand-in tokenizer, so a SentencePiece model trained on the result
covers the templates, keys, numbers and filler the tasks use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from megatron_endprompt.eval.tasks import TASKS, make_sample


class ByteTokenizer:
    """UTF-8 bytes as ids 3..258 (0 unk, 1 bos, 2 eod): a tokenizer that needs no training."""

    name = "bytes"
    vocab_size = 259
    bos = 1
    eod = 2

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(
            "utf-8", errors="replace"
        )  # others: not bytes

    def token_to_id(self, token: str) -> int | None:
        data = token.encode("utf-8")
        return data[0] + 3 if len(data) == 1 else None


def task_texts(
    tasks: Sequence[str] | None = None, per_task: int = 4, length: int = 4000, seed: int = 0
) -> list[str]:
    """Prompt text plus answers of `per_task` samples of every task (`length` counted in bytes)."""
    tok = ByteTokenizer()
    texts = []
    for task in tasks or sorted(TASKS):
        for i in range(per_task):
            sample = make_sample(task, tok, length, (i % 5) / 4, seed, i)
            texts.append(sample.prompt_text + " " + " ".join(sample.answers))
    return texts
