"""The same tiny model evaluated from its HF directory and from its Megatron conversion gives the same
per-sample answers and perplexities, and the CLI writes results.json / results.md / plots for it."""

import json

import numpy as np
import pytest
import torch

from megatron_endprompt.data.tokenizers import load_tokenizer, train_sentencepiece
from megatron_endprompt.eval.backends import HFBackend, MegatronBackend
from megatron_endprompt.eval.cli import main
from megatron_endprompt.eval.corpus import task_texts
from megatron_endprompt.eval.runner import evaluate

MAX_POSITIONS = 1024


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_endprompt.convert import hf_to_megatron

    root = tmp_path_factory.mktemp("parity")
    sp = train_sentencepiece(task_texts(["passkey", "niah_single_1"], per_task=3), root / "sp", 512)
    tok = load_tokenizer("SentencePieceTokenizer", sp)
    torch.manual_seed(0)
    # vocab_size + 37: megatron pads the vocabulary to 640 rows; evaluation must mask the padding
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size + 37, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        rope_theta=10000.0, bos_token_id=tok.bos, eos_token_id=tok.eod, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init: decisive argmaxes, non-trivial generations
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.save_pretrained(root / "hf")
    hf_to_megatron(root / "hf", root / "megatron")
    text = " ".join(task_texts(["niah_single_2"], per_task=2))
    (root / "heldout.txt").write_text(text)
    return root, tok, sp


def test_hf_and_megatron_agree_per_sample_and_on_perplexity(assets):
    root, tok, _ = assets
    hf, meg = (
        HFBackend(root / "hf", device="cpu"),
        MegatronBackend.from_checkpoint(root / "megatron", device="cpu"),
    )
    assert hf.max_positions == meg.max_positions == MAX_POSITIONS
    ids = torch.tensor([tok.encode("The grass is green. The pass key is 123.")])
    torch.testing.assert_close(meg.logits(ids), hf.logits(ids), atol=2e-4, rtol=1e-4)
    # Megatron generation recomputes the whole prefix per token: keep prompts short and few
    kwargs = dict(tasks=["passkey", "perplexity"], lengths=[160, 256], depths=[0.0, 1.0], samples=1, seed=7,
                  max_new_tokens=6, ppl_data=root / "heldout.txt", progress=False)  # fmt: skip
    a, b = evaluate(hf, tok, **kwargs), evaluate(meg, tok, **kwargs)
    preds_a = [(s["task"], s["length"], s["depth"], s["generated_ids"]) for s in a["samples"]]
    preds_b = [(s["task"], s["length"], s["depth"], s["generated_ids"]) for s in b["samples"]]
    assert preds_a == preds_b
    assert any(len(s["generated_ids"]) > 0 for s in a["samples"])
    assert a["results"] == b["results"]
    for n in ("160", "256"):
        assert a["perplexity"][n]["windows"] >= 1
        assert np.isclose(a["perplexity"][n]["ppl"], b["perplexity"][n]["ppl"], rtol=1e-4)
        assert np.isclose(a["perplexity"][n]["tail_ppl"], b["perplexity"][n]["tail_ppl"], rtol=1e-4)


def test_megatron_generation_with_a_draft_is_transformers_greedy(assets):
    """Drafts (right, half right, wrong) change the number of forwards, never the tokens: every continuation
    equals transformers' KV-cached greedy decoding of the same model."""
    root, tok, _ = assets
    hf = HFBackend(root / "hf", device="cpu")
    meg = MegatronBackend.from_checkpoint(root / "megatron", device="cpu")
    calls = []
    tail = meg._tail_logits
    meg._tail_logits = lambda ids, n: calls.append(n) or tail(ids, n)
    gen = torch.Generator().manual_seed(5)
    for length in (40, 200):
        prompt = torch.randint(3, tok.vocab_size, (length,), generator=gen).tolist()
        truth = hf.generate(prompt, 6)
        assert len(truth) == 6  # no stop ids given: six tokens
        wrong = [(t + 1) % tok.vocab_size for t in truth]
        for draft, forwards in ((truth, 1), (truth[:2] + wrong[2:], 4), (wrong, 6), ((), 6)):
            calls.clear()
            assert meg.generate(prompt, 6, draft=draft) == truth
            assert len(calls) == forwards, (draft, calls)


def test_answer_nll_costs_megatron_no_extra_forward(assets):
    """Scoring the answer then generating with it as the draft reuses one forward: the same number of forwards
    with and without `answer_nll`, and the same generations."""
    root, tok, _ = assets
    meg = MegatronBackend.from_checkpoint(root / "megatron", device="cpu")
    forwards = []
    meg._gpt().decoder.register_forward_hook(lambda *_: forwards.append(1))
    kwargs = dict(tasks=["passkey"], lengths=[200], depths=[0.0, 1.0], samples=2, seed=3, max_new_tokens=6,
                  progress=False, task_options={"passkey": {"key_max": 999}})  # fmt: skip
    runs = {}
    for nll in (False, True):
        forwards.clear()
        result = evaluate(meg, tok, answer_nll=nll, **kwargs)
        runs[nll] = (len(forwards), [s["generated_ids"] for s in result["samples"]])
    assert runs[True] == runs[False]
    assert runs[False][0] >= 4  # at least one forward per prompt
    assert all(s["answer_nll"] > 0 for s in result["samples"])


def test_cli_writes_results_markdown_and_plots(assets, tmp_path, capsys):
    root, _, sp = assets
    out = tmp_path / "out"
    argv = ["--checkpoint", str(root / "megatron"), "--tokenizer", sp, "--tasks", "passkey,perplexity",
            "--lengths", "160,256", "--depths", "0,1", "--samples", "1", "--max-new-tokens", "4",
            "--ppl-data", str(root / "heldout.txt"), "--out", str(out), "--no-progress",
            "--task-option", "passkey.key_max=99", "--answer-nll"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["task_options"] == {"passkey": {"key_max": 99}}
    assert results["config"]["answer_nll"] is True and set(results["answer_nll"]["passkey"]) == {"160", "256"}
    assert all(1 <= int(s["answers"][0]) <= 99 for s in results["samples"] if s["task"] == "passkey")
    assert set(results["results"]["passkey"]) == {"160", "256"}
    assert set(results["depth_detail"]["passkey"]["256"]) == {"0", "1"}
    assert results["config"]["checkpoint"] == str(root / "megatron") and results["config"]["seed"] == 0
    assert set(results["perplexity"]) == {"160", "256"}
    assert "| passkey |" in (out / "results.md").read_text()
    for png in ("heatmap_passkey.png", "perplexity_vs_length.png", "score_vs_length.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_inputs_fail_with_clear_messages(assets, tmp_path, capsys):
    root, _, sp = assets
    base = ["--checkpoint", str(root / "hf"), "--out", str(tmp_path / "o"), "--no-progress"]
    cases = [
        (
            ["--tokenizer", sp, "--tasks", "passkey,bogus", "--lengths", "256"],
            "--tasks: unknown task 'bogus'",
        ),
        (["--tokenizer", sp, "--lengths", "1020"], "exceed the model's max_position_embeddings 1024"),
        (["--lengths", "256"], "--tokenizer: none given"),
        (["--tokenizer", str(tmp_path / "missing.model"), "--lengths", "256"], "does not exist"),
        (["--tokenizer", sp, "--lengths", "256", "--depths", "50"], "--depths: values are fractions"),
        (["--tokenizer", sp, "--tasks", "perplexity", "--lengths", "256"], "--ppl-data"),
        (["--tokenizer", sp, "--lengths", "256", "--tp", "2"], "torchrun"),
        (
            ["--tokenizer", sp, "--lengths", "256", "--task-option", "passkey.digits=3"],
            "passkey accepts ['key_max']",
        ),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "o").exists()


def test_answer_nll_is_the_reference_models_answer_likelihood(assets):
    """`answer_nll` equals the mean -log p(answer token) computed from transformers' own logits."""
    from transformers import LlamaForCausalLM

    from megatron_endprompt.eval.runner import answer_ids, teacher_forced_answer_nll
    from megatron_endprompt.eval.tasks import make_sample

    root, tok, _ = assets
    sample = make_sample("passkey", tok, 200, 0.5, seed=3, options={"key_max": 999})
    answer = answer_ids(tok, sample)
    assert tok.decode(answer).strip() == sample.answers[0]
    ids = torch.tensor([sample.prompt_ids + answer])
    with torch.no_grad():
        logp = LlamaForCausalLM.from_pretrained(root / "hf").eval()(ids).logits.float().log_softmax(-1)[0]
    n = len(answer)
    expected = -logp[-n - 1 : -1].gather(1, ids[0, -n:, None]).mean().item()
    meg = MegatronBackend.from_checkpoint(root / "megatron", device="cpu")
    for backend in (meg, HFBackend(root / "hf", device="cpu")):
        assert teacher_forced_answer_nll(backend, tok, sample) == pytest.approx(expected, abs=1e-4)
    result = evaluate(meg, tok, ["passkey"], [200], [0.5], 1, seed=3, max_new_tokens=2, progress=False,
                      answer_nll=True)  # fmt: skip
    assert set(result["answer_nll"]["passkey"]) == {"200"} and result["samples"][0]["answer_nll"] > 0
    assert result["config"]["answer_nll"] is True
    plain = evaluate(meg, tok, ["passkey"], [200], [0.5], 1, seed=3, max_new_tokens=2, progress=False)
    assert "answer_nll" not in plain and "answer_nll" not in plain["samples"][0]  # opt-in: no extra forward
