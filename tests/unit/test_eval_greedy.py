"""Greedy decoding with a draft (`greedy_recompute(..., draft=...)`) returns exactly the plain greedy
continuation, for any draft, and needs fewer forwards when the draft is right."""

import random

import torch

from megatron_endprompt.eval.backends import greedy_recompute

VOCAB = 11


def next_token(prefix: list[int]) -> int:
    """A deterministic toy 'model': the greedy next token depends on the whole prefix."""
    return (sum(t * (i + 3) for i, t in enumerate(prefix)) + 7 * len(prefix)) % VOCAB


class CountingModel:
    """tail_logits(ids, n) of the toy model (one-hot logits), counting forwards."""

    def __init__(self):
        self.forwards = 0

    def __call__(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        self.forwards += 1
        seq = ids[0].tolist()
        out = torch.zeros(n, VOCAB)
        for row, end in enumerate(range(len(seq) - n + 1, len(seq) + 1)):
            out[row, next_token(seq[:end])] = 1.0
        return out


def plain_greedy(prompt: list[int], max_new: int, stop: list[int]) -> list[int]:
    new: list[int] = []
    while len(new) < max_new:
        tok = next_token(prompt + new)
        if tok in stop:
            break
        new.append(tok)
    return new


def decode(prompt, max_new, stop, draft=()):
    model = CountingModel()
    return greedy_recompute(model, prompt, max_new, stop, "cpu", draft), model.forwards


def test_any_draft_gives_the_plain_greedy_continuation():
    rng = random.Random(0)
    for _ in range(400):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 9))]
        max_new = rng.randrange(0, 7)
        stop = rng.sample(range(VOCAB), rng.randrange(0, 3))
        truth = plain_greedy(prompt, max_new, stop)
        right = plain_greedy(prompt, 10, [])  # ignores stops: may run past a stop token
        cut = rng.randrange(0, len(right) + 1)
        drafts = [
            right,
            right[:cut],
            right[:cut] + [rng.randrange(VOCAB)] * 3,
            [rng.randrange(VOCAB)] * 4,
            [],
        ]
        for draft in drafts:
            got, _ = decode(prompt, max_new, stop, draft)
            assert got == truth, (prompt, max_new, stop, draft)


def test_a_right_draft_costs_one_forward_a_wrong_one_costs_nothing_extra():
    prompt = [3, 1, 4, 1, 5]
    truth = plain_greedy(prompt, 5, [])
    assert len(truth) == 5
    assert decode(prompt, 5, [], ()) == (truth, 5)  # one forward per token
    assert decode(prompt, 5, [], truth) == (truth, 1)  # 4 guesses verified + the 5th token, one forward
    assert decode(prompt, 5, [], truth[:2]) == (truth, 3)  # 3 tokens in one forward, then 2 plain steps
    wrong = [(truth[0] + 1) % VOCAB] * 4
    assert decode(prompt, 5, [], wrong) == (truth, 5)


def test_a_stop_token_inside_a_verified_draft_ends_decoding():
    prompt = [2, 7, 1]
    right = plain_greedy(prompt, 6, [])
    stop = [right[2]]
    got, forwards = decode(prompt, 6, stop, right)
    assert got == right[: right.index(right[2])]
    assert forwards == 1
