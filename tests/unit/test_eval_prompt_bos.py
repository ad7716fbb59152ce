"""Evaluation prompts start with BOS only when the model's tokenizer itself prepends one.

SmolLM2's tokenizer names <|im_start|> as its bos_token but its encoding never adds it; prompts that began with
it made SmolLM2-135M-Instruct answer "a special type of pass..." instead of the key in 3 of 6 passkey prompts at
2K tokens (all 3 retrieved without it; docs/results/real_model.md). Llama 3's tokenizer adds <|begin_of_text|>
through its post-processor, so its prompts keep it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_endprompt.data.tokenizers import HuggingFaceTokenizer
from megatron_endprompt.eval.tasks import make_sample

tokenizers = pytest.importorskip("tokenizers")


def _write_tokenizer(folder: Path, bos_post_processor: bool) -> Path:
    """A byte-level BPE tokenizer.json (no merges) with <s> and </s>; optionally a post-processor adding <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    if bos_post_processor:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return folder / "tokenizer.json"


@pytest.mark.parametrize("prepends", [False, True])
def test_prompt_starts_with_bos_only_when_the_tokenizer_prepends_it(tmp_path, prepends):
    tok = HuggingFaceTokenizer(_write_tokenizer(tmp_path / "tok", prepends))
    assert tok.bos == 0 and tok.prepends_bos is prepends
    sample = make_sample("passkey", tok, 400, 0.5, 0, 0, {})
    assert (sample.prompt_ids[0] == tok.bos) is prepends
    assert tok.bos not in sample.prompt_ids[1:]
    assert len(sample.prompt_ids) <= 400


def test_tokenizers_without_the_attribute_keep_bos():
    """SentencePiece tokenizers (and other TokenizerLike objects) have no `prepends_bos`: BOS stays."""

    class Chars:
        bos, eod, vocab_size = 1, 2, 300

        def encode(self, text):
            return [3 + (ord(c) % 290) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    sample = make_sample("passkey", Chars(), 400, 0.5, 0, 0, {})
    assert sample.prompt_ids[0] == 1
