"""Optional: lm-evaluation-harness's offline RULER subset runs on an HF export (docs/evaluation.md recipe).

Skipped unless lm-eval (>= 0.4.9, with its `ruler` extras: wonderwords, nltk + punkt_tab data) is installed;
CI does not install it.
"""

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
pytest.importorskip("wonderwords", reason="lm-eval's ruler tasks need wonderwords")
nltk = pytest.importorskip("nltk", reason="lm-eval's ruler tasks need nltk")

OFFLINE_SUBSET = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe"]


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory):
    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        pytest.skip("nltk punkt_tab data missing (lm-eval would try to download it)")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from megatron_endprompt.eval.corpus import task_texts

    out = tmp_path_factory.mktemp("lm_eval_hf")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"])
    bpe.train_from_iterator(task_texts(per_task=2), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_offline_ruler_subset_runs(hf_export):
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_export},tokenizer={hf_export},max_length=2048,dtype=float32",
        tasks=OFFLINE_SUBSET,
        metadata={"max_seq_lengths": [1024]},
        limit=1,
        device="cpu",
        batch_size=1,
        gen_kwargs="max_gen_toks=8",
    )
    for task in OFFLINE_SUBSET:
        metrics = results["results"][task]
        scores = [v for k, v in metrics.items() if k.startswith("1024")]
        assert scores and all(0.0 <= s <= 1.0 for s in scores), (task, metrics)
