"""KV-cached decoding: the model through megatron's static inference context keeps per-token RoPE positions,
and the Megatron backend with the cache gives the same generations and answer NLLs as full recomputation,
prefilling once and then feeding one token per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from megatron.core.inference.contexts import StaticInferenceContext

from megatron_endprompt.convert.loading import LoadedModel
from megatron_endprompt.eval import kv_cache
from megatron_endprompt.eval.backends import MegatronBackend
from megatron_endprompt.eval.corpus import ByteTokenizer
from megatron_endprompt.eval.megatron_hooks import final_hidden, local_logits
from megatron_endprompt.eval.runner import evaluate
from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import build_model
from megatron_endprompt.model.kv_cache import KVCacheContext
from megatron_endprompt.parallel import initialize

VOCAB = 300


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    initialize(tp=1, pp=1, cp=1, seed=1234)
    cfg = get_preset("tiny").replace(vocab_size=VOCAB, max_position_embeddings=4096)
    model = build_model(cfg, use_te=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger than the init std: decisive argmaxes, non-trivial generations
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return LoadedModel(model.eval().requires_grad_(False), cfg, Path("random")).eval()


def _logits(gpt, tokens, positions, **kwargs) -> torch.Tensor:
    hidden, out_kwargs = final_hidden(gpt, tokens, positions, **kwargs)
    return local_logits(gpt, hidden, out_kwargs, VOCAB)[:, 0, :VOCAB]


@torch.no_grad()
def test_cached_steps_match_a_full_forward_with_jumping_positions(loaded):
    """Prefill, a 3-token step (a draft: causal among the new tokens) and single-token steps, at positions that
    jump (as in EndPrompt training): the logits equal one full forward's."""
    gpt = loaded.model
    tokens = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(10), torch.arange(3000, 3014)]).unsqueeze(0)
    full = _logits(gpt, tokens, positions)
    context = KVCacheContext(gpt, capacity=32)
    got = []
    for start, end in ((0, 12), (12, 15), (15, 16), (16, 17), (17, 24)):
        got.append(
            _logits(
                gpt,
                tokens[:, start:end],
                positions[:, start:end],
                inference_context=context,
                attention_mask=context.attention_mask(end - start),
                runtime_gather_output=True,
            )
        )
        context.sequence_len_offset = end
    torch.testing.assert_close(torch.cat(got), full, atol=1e-5, rtol=1e-5)
    # rolling back (a rejected draft) and rewriting the slots gives the same rows again
    context.sequence_len_offset = 14
    again = _logits(gpt, tokens[:, 14:24], positions[:, 14:24], inference_context=context,
                    attention_mask=context.attention_mask(10), runtime_gather_output=True)  # fmt: skip
    torch.testing.assert_close(again, full[14:], atol=1e-5, rtol=1e-5)


def test_a_context_without_slot_positions_is_refused(loaded):
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="KVCacheContext"):
        final_hidden(loaded.model, tokens, torch.arange(4).unsqueeze(0),
                     inference_context=StaticInferenceContext(1, 16), runtime_gather_output=True)  # fmt: skip


def _prompts(n_tokens=(7, 60, 200), seed=2) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in n_tokens]


def test_cached_backend_gives_the_recompute_generations_and_nlls(loaded, monkeypatch):
    """Same tokens for every draft (right, half right, wrong, none); bit-identical answer NLLs; a cache too small
    for the next prompt is reopened."""
    monkeypatch.setattr(kv_cache, "HEADROOM", 4)  # the 60- and 200-token prompts outgrow the cache
    plain = MegatronBackend(loaded, kv_cache=False)
    cached = MegatronBackend(loaded)
    assert cached._cached is not None and plain._cached is None
    for prompt in _prompts():
        truth = plain.generate(prompt, 8)
        assert len(truth) == 8 and len(set(truth)) > 1
        wrong = [(t + 1) % VOCAB for t in truth]
        for draft in (truth, truth[:3] + wrong[3:], wrong, ()):
            assert cached.generate(prompt, 8, draft=draft) == truth, draft
        assert torch.equal(cached.token_nll(prompt + truth), plain.token_nll(prompt + truth))


def test_prefill_once_then_one_token_per_step(loaded, monkeypatch):
    fed = []
    real = kv_cache.final_hidden
    monkeypatch.setattr(
        kv_cache, "final_hidden", lambda gpt, t, *a, **k: fed.append(t.shape[1]) or real(gpt, t, *a, **k)
    )
    backend = MegatronBackend(loaded)
    prompt = _prompts((50,), seed=4)[0]
    truth = backend.generate(prompt, 6)
    assert fed == [50, 1, 1, 1, 1, 1]
    # scoring the answer prefills prompt + answer; generating with it as the draft then costs nothing more
    fed.clear()
    backend.token_nll(prompt + truth)
    assert backend.generate(prompt, 6, draft=truth) == truth
    assert fed == [56]
    # a draft wrong from its third token: rows of the kept forward up to there, then single tokens
    fed.clear()
    draft = truth[:2] + [(t + 1) % VOCAB for t in truth[2:]]
    backend.token_nll(prompt + draft)
    assert backend.generate(prompt, 6, draft=draft) == truth
    assert fed == [56, 1, 1, 1]


def test_evaluation_with_answer_nll_is_unchanged_by_the_cache(loaded):
    kwargs = dict(tasks=["passkey"], lengths=[300], depths=[0.0, 1.0], samples=1, seed=3, max_new_tokens=5,
                  progress=False, answer_nll=True)  # fmt: skip
    runs = [
        [(s["generated_ids"], s["answer_nll"]) for s in evaluate(b, ByteTokenizer(), **kwargs)["samples"]]
        for b in (MegatronBackend(loaded, kv_cache=False), MegatronBackend(loaded))
    ]
    assert runs[0] == runs[1]
    assert any(ids for ids, _ in runs[0])
