"""The toy reproduction's shipped settings parse, every variant maps to a valid position scheme, and the token
budget is equal across variants while FLOPs reflect the physical length."""

import json
from pathlib import Path

import pytest


def test_shipped_config_parses_and_schemes_are_valid(toy) -> None:
    import toy_config

    cfg = toy.load_toy_config(Path(toy.__file__).with_name("config.yaml"), [])
    assert cfg.variants == list(toy_config.DECIDING_VARIANTS)  # what the pre-registered contrasts need
    schemes = toy.schemes(cfg)
    for variant in toy.VARIANTS:
        if variant != "pi_only":
            scheme, cues = schemes[variant]
            scheme.validate(max_cue_length=16 if cues else None)
            assert scheme.seq_length == toy.physical_length(cfg, variant)
    assert schemes["full_length"][0].seq_length == cfg.target_length == 8 * cfg.base_length


def test_equal_tokens_more_flops_for_full_length(toy) -> None:
    cfg = toy.load_toy_config(None, ["extend_steps=10"])
    short, full = toy.training_flops(cfg, "endprompt"), toy.training_flops(cfg, "full_length")
    assert toy.training_flops(cfg, "pi_only") == 0.0
    assert full > short > 0  # same tokens, but attention over T instead of P0
    batch = {
        v: cfg.extend_tokens_per_step // toy.physical_length(cfg, v) for v in ("endprompt", "full_length")
    }
    assert batch == {"endprompt": 16, "full_length": 2}


def test_bad_settings_name_the_key(toy) -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        toy.load_toy_config(None, ["no_such_key=1"])
    with pytest.raises(ValueError, match="base_curriculum"):
        toy.load_toy_config(None, ["base_curriculum=[64,128]", "base_steps=[1,1]"])
    with pytest.raises(ValueError, match="variants"):
        toy.load_toy_config(None, ["variants=[magic]"])
    with pytest.raises(ValueError, match="scaling: linear or yarn, got 'ntk'"):
        toy.load_toy_config(None, ["scaling=ntk"])
    with pytest.raises(ValueError, match="packing: concat or aligned, got 'document'"):
        toy.load_toy_config(None, ["packing=document"])
    with pytest.raises(ValueError, match="focus_min_words <= focus_max_words, got 200, 170"):
        toy.load_toy_config(None, ["focus_min_words=200"])


def test_shipped_yaml_equals_the_documented_defaults(toy) -> None:
    import dataclasses

    import yaml

    shipped = yaml.safe_load(Path(toy.__file__).with_name("config.yaml").read_text())
    assert shipped == dataclasses.asdict(toy.ToyConfig())


def test_eval_draws_keys_like_the_corpus(toy) -> None:
    cfg = toy.load_toy_config(
        None, ["passkey_max=99", "value_digits=2", "eval_tasks=[passkey,niah_single_1,vt]"]
    )
    assert toy.task_options(cfg) == {"passkey": {"key_max": 99}, "niah_single_1": {"number_digits": 2}}
    corpus = toy.corpus_config(cfg, 10, seed=0)
    assert (corpus.passkey_max, corpus.value_digits, corpus.repeat_fraction) == (99, 2, cfg.repeat_fraction)


def test_base_stages_warmup_first_repeat_lengths_and_end_with_the_focus_stage(toy) -> None:
    curriculum = ["base_curriculum=[128,256,256]", "base_steps=[10,20,30]"]
    cfg = toy.load_toy_config(None, [*curriculum, "focus_steps=5", "warmup_steps=7"])
    constant = {"lr": 1e-3, "min_lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 1}
    assert toy.base_stages(cfg) == [
        ("base_warmup", "base_warmup", 128, 7, 0, constant),  # passkey documents alone, at the first length
        ("base_128", "base_128", 128, 10, 0, None),
        ("base_256", "base_256", 256, 20, 0, None),
        ("base_256_1", "base_256", 256, 30, 1, None),  # same data, new order
        ("base_focus", "base_focus", 256, 5, 0, None),
    ]
    assert set(toy.schemes(cfg)) >= {"base_128", "base_256", "base_focus"}  # one dataset per length + focus
    no_focus = toy.load_toy_config(None, [*curriculum, "focus_steps=0", "warmup_steps=0"])
    assert not {"base_focus", "base_warmup"} & set(toy.schemes(no_focus))
    assert [s.name for s in toy.base_stages(no_focus)] == ["base_128", "base_256", "base_256_1"]
    assert toy.base_flops(cfg) > toy.base_flops(no_focus)


def fake_evals(lengths: list[int], passkey: float) -> dict:
    """One evaluation's JSON as `evaluate_run` caches it, with the same score at every length."""
    scores = {str(n): passkey for n in lengths}
    ppl = {str(n): {"ppl": 2.0, "tail_ppl": 2.5} for n in lengths}
    nll = {str(n): 2.3 - passkey / 50 for n in lengths}
    return {
        "results": {"passkey": scores, "niah_single_1": scores},
        "answer_nll": {"passkey": nll, "niah_single_1": nll},
        "perplexity": ppl,
        "elapsed_s": 40.0,
        "depth_detail": {"passkey": {str(n): {"0": passkey / 2, "1": passkey} for n in lengths}},
    }


def test_report_states_base_strength_precision_and_scores(toy, report, tmp_path) -> None:
    import dataclasses

    overrides = ["seeds=[0,1]", "eval_lengths=[256,2032]", "eval_samples=5"]
    cfg = dataclasses.asdict(toy.load_toy_config(None, overrides))

    def evals(passkey: float) -> dict:
        return fake_evals(cfg["eval_lengths"], passkey)

    rows = {"base": {"seconds": 60.0, "physical_length": 256, "flops": 1e12, "evals": [evals(96.0)]}}
    rows["endprompt"] = {
        "seconds": [5.0, 7.0],
        "physical_length": 256,
        "flops": 1e11,
        "evals": [evals(40), evals(60)],
    }
    meta = {"command": "python run.py", "date": "2026-11-28", "hardware": "cpu", "wall_minutes": 3.0}
    text = report.markdown({"config": cfg, "rows": rows}, meta)
    assert "passkey accuracy at P0 = 256: 96% (strong enough" in text
    # 60 s base + 5 s + 7 s variant seeds = 72 s of training; 3 evals of 40 s
    assert "this invocation 3 min; training 1 min and evaluation 2 min, summed over runs" in text
    assert "| endprompt | 256 | 1.00e+11 | 6 | 50 ± 10 | 50 ± 10 |" in text
    assert "## passkey_answer_nll" in text and "| endprompt | 256 | 1.00e+11 | 6 | 1.30 ± 0.20 |" in text
    assert "## passkey at 2032 tokens by needle depth" in text and "| endprompt | 25 | 50 |" in text
    assert "## niah_single_1 at 2032 tokens by needle depth" not in text  # no depth detail recorded for it
    assert "per seed, paired" not in text  # no contiguous_short row to pair with
    paired = {**rows, "contiguous_short": {**rows["endprompt"], "evals": [evals(50), evals(45)]}}
    text = report.markdown({"config": cfg, "rows": paired}, meta)
    assert "## passkey at 2032 tokens per seed, paired with contiguous_short" in text
    assert "| contiguous_short | 50 | 45 | (reference) | |" in text
    assert "| endprompt | 40 | 60 | -10 / +15 | 1 of 2 |" in text
    one_seed = {**cfg, "seeds": [0]}
    assert "per seed, paired" not in report.markdown({"config": one_seed, "rows": paired}, meta)
    assert "pools 50 prompts" in text and "standard error <= 7.1 points" in text
    assert "then 1000 steps at P0 on a retrieval-focused corpus" in text
    assert (
        "a warm-up of 1000 steps at 128 (constant LR 0.001) on passkey documents alone" in text
        and "--packing aligned" in text
    )
    rows["base"]["evals"] = [evals(80.0)]
    assert "NOT strong enough" in report.markdown({"config": cfg, "rows": rows}, meta)
    only_t = {**cfg, "eval_lengths": [2032]}  # a precision run at T only: no P0 column to judge the base by
    assert "at P0 = 256: not measured here" in report.markdown({"config": only_t, "rows": rows}, meta)
    assert report.plot({"config": cfg, "rows": rows}, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_every_dataset_is_built_with_the_configured_packing(toy, tmp_path) -> None:
    """Base and variant data alike start each sample at a document start (`packing: aligned`)."""
    import json

    cfg = toy.load_toy_config(None, ["documents=300", "vocab_size=400", "focus_steps=10"])
    _, prefixes = toy.build_all(tmp_path, cfg)
    assert set(prefixes) == set(toy.schemes(cfg))
    for prefix in prefixes.values():
        meta = json.loads(Path(f"{prefix}.meta.json").read_text())
        assert meta["config"]["packing"] == "aligned" and meta["counts"]["samples"] > 0, prefix
    warmup = [json.loads(line)["text"] for line in (tmp_path / "corpus" / "warmup.jsonl").open()]
    assert len(warmup) == 150 and all("The pass key is" in t for t in warmup)  # passkey documents only
    focus = [json.loads(line)["text"] for line in (tmp_path / "corpus" / "focus.jsonl").open()]
    passkeys = [t for t in focus if t.startswith("There is an important info")]
    # instruction (24 words) + needle (10) + question (7) + answer (1) around an 80..170-word haystack
    assert passkeys and all(80 + 42 <= len(t.split()) <= 170 + 42 + 8 for t in passkeys)


def test_warmup_trains_at_a_constant_lr_and_the_curriculum_follows_it(toy, monkeypatch, tmp_path) -> None:
    calls = []

    def fake_train(out, name, run, model, optimizer=None):
        calls.append((name, run.seq_length, run.steps, run.lr, run.init_from, optimizer))
        return tmp_path / name, 1.0

    monkeypatch.setattr(toy, "_train", fake_train)
    cfg = toy.load_toy_config(None, [])
    data = {name: f"/data/{name}" for name in toy.schemes(cfg)}
    ckpt, seconds = toy.train_base(tmp_path, cfg, data)
    assert [c[0] for c in calls] == ["base_warmup", "base_128", "base_256", "base_focus"]
    assert calls[0][5] == {"lr": 1e-3, "min_lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 100}
    assert all(c[5] is None for c in calls[1:])  # the curriculum keeps the recipe's cosine schedule
    assert [c[4] for c in calls[1:]] == [str(tmp_path / n) for n in ("base_warmup", "base_128", "base_256")]
    assert (ckpt, seconds) == (tmp_path / "base_focus", 4.0)


def test_scaling_reaches_every_extended_model(toy, tmp_path) -> None:
    """`scaling` sets the RoPE scaling of the fine-tuned variants and of the no-fine-tuning copy alike."""
    import json

    cfg = toy.load_toy_config(None, ["scaling=yarn"])
    expected = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256}
    assert toy.rope_scaling(cfg) == expected
    assert toy.rope_scaling(toy.load_toy_config(None, [])) == {"type": "linear", "factor": 8.0}
    base = tmp_path / "base"
    base.mkdir()
    (base / "endprompt_model.json").write_text(
        json.dumps({"rope_scaling": {"type": "none", "beta_fast": 32.0}})
    )
    copy = toy.extend(tmp_path, cfg, {}, base, "pi_only", 0)[0]
    assert json.loads((copy / "endprompt_model.json").read_text())["rope_scaling"] == {
        "beta_fast": 32.0,
        **expected,
    }


@pytest.fixture
def trained(toy, monkeypatch) -> list[str]:
    """Names of the runs `experiments.run_training` was asked for; each fake run leaves one empty checkpoint."""
    names: list[str] = []

    def fake_run_training(out, name, spec):
        names.append(name)
        ckpt = Path(spec["checkpoint"]["save"]) / "iter_0000001"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "checkpoint_complete").touch()  # a committed checkpoint, as training leaves it
        return ckpt

    monkeypatch.setattr(toy.experiments, "run_training", fake_run_training)
    return names


def train_chain(toy, out: Path, lr: float = 1e-3, variant_steps: int = 5) -> Path:
    """A base and a variant trained from it under `out` (cached like the real runs); the variant's checkpoint."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    base = toy.experiments.RunSpec("/d/base", 256, 4, 10, lr, str(out / "runs" / "base"))
    ckpt, _ = toy._train(out, "base", base, {})
    run = toy.experiments.RunSpec(
        "/d/v", 256, 4, variant_steps, 1e-4, str(out / "runs" / "v"), init_from=str(ckpt)
    )
    return toy._train(out, "v", run, {})[0]


def test_cached_runs_are_reused_only_with_the_same_settings(toy, trained, tmp_path) -> None:
    """A changed setting retrains that run and everything trained from it; an unchanged one is reused."""
    train_chain(toy, tmp_path, 1e-3, 5)
    train_chain(toy, tmp_path, 1e-3, 5)
    assert trained == ["base", "v"]  # the second call reused both
    train_chain(toy, tmp_path, 1e-3, 6)
    assert trained[2:] == ["v"]  # only the variant's settings changed
    train_chain(toy, tmp_path, 2e-3, 6)
    assert trained[3:] == ["base", "v"]  # a new base invalidates the variant trained from it
    done = json.loads((tmp_path / "runs" / "v.done.json").read_text())
    assert done["checkpoint"].endswith("iter_0000001") and len(done["fingerprint"]) == 16


def test_a_copied_out_dir_reuses_its_runs(toy, trained, tmp_path) -> None:
    """Checkpoints recorded under the old --out are found under the copy, and the chain stays valid."""
    import shutil

    train_chain(toy, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert train_chain(toy, tmp_path / "b") == tmp_path / "b" / "runs" / "v" / "iter_0000001"
    assert trained == ["base", "v"]  # nothing trained again in the copy


def test_evaluations_are_cached_per_length_and_redone_when_the_eval_settings_change(
    toy, monkeypatch, tmp_path
) -> None:
    import megatron_endprompt.data.tokenizers as tokenizers
    import megatron_endprompt.eval.backends as backends
    import megatron_endprompt.eval.runner as runner

    calls, loads = [], []

    def fake_evaluate(backend, tok, **request):
        (n,) = request["lengths"]
        calls.append((n, request["samples"]))
        return {
            "results": {"passkey": {str(n): float(n % 100)}},
            "answer_nll": {"passkey": {str(n): 0.5}},
            "depth_detail": {"passkey": {str(n): {"0": 1.0}}},
            "elapsed_s": 2.0,
            "samples": [{"task": "passkey", "length": n, "depth": 1.0, "answer_nll": 0.5}],
        }

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    monkeypatch.setattr(tokenizers, "load_tokenizer", lambda *a: None)
    monkeypatch.setattr(backends.MegatronBackend, "from_checkpoint", staticmethod(lambda c: loads.append(c)))
    ckpt = tmp_path / "runs" / "base" / "iter_0000001"

    def run(*overrides: str) -> dict:
        cfg = toy.load_toy_config(None, list(overrides))
        return toy.evaluate_run(tmp_path, cfg, tmp_path / "tok.model", "base", ckpt, seed=0)

    run("eval_samples=5", "eval_lengths=[256]")
    run("eval_samples=5", "eval_lengths=[256]")
    assert calls == [(256, 5)] and len(loads) == 1  # cached: the model is not even loaded
    result = run("eval_samples=5", "eval_lengths=[256,1024]")  # only the new length is evaluated
    assert calls == [(256, 5), (1024, 5)] and len(loads) == 2
    assert result["results"] == {"passkey": {"256": 56.0, "1024": 24.0}} and "samples" not in result
    assert set(result["depth_detail"]["passkey"]) == {"256", "1024"} and result["elapsed_s"] == 4.0
    assert result["answer_nll_depth"] == {"passkey": {"256": {"1": 0.5}, "1024": {"1": 0.5}}}  # per depth
    run("eval_samples=10", "eval_lengths=[256,1024]")
    assert calls[2:] == [(256, 10), (1024, 10)] and len(loads) == 3  # one load for both lengths
    path = tmp_path / "eval" / "base_L256.json"
    cached = json.loads(path.read_text())
    del cached["fingerprint"]  # an older cache without one is evaluated again
    path.write_text(json.dumps(cached))
    run("eval_samples=10", "eval_lengths=[256,1024]")
    assert calls[4:] == [(256, 10)]


def test_recorded_command_leaves_the_note_out(report) -> None:
    argv = ["run.py", "--out", "o", "--note", "long text", "--set", "a=1", "--note=x y"]
    assert report.recorded_command(argv) == "python run.py --out o --set a=1"


def test_an_out_dir_keeps_the_data_settings_it_was_made_with(toy, tmp_path) -> None:
    toy.check_data_settings(tmp_path, toy.load_toy_config(None, []))
    toy.check_data_settings(tmp_path, toy.load_toy_config(None, ["extend_steps=7", "scaling=yarn"]))
    with pytest.raises(ValueError, match=r"documents: 30000 there, 500 now\); use a fresh --out"):
        toy.check_data_settings(tmp_path, toy.load_toy_config(None, ["documents=500"]))
    recorded = json.loads((tmp_path / "data_settings.json").read_text())
    assert recorded["documents"] == 30000 and set(recorded) == set(toy.DATA_KEYS)


def test_report_only_rewrites_the_report_from_results_json(toy, tmp_path) -> None:
    import dataclasses

    cfg = dataclasses.asdict(toy.load_toy_config(None, ["eval_lengths=[256]"]))
    rows = {
        "base": {"seconds": 60.0, "physical_length": 256, "flops": 1e12, "evals": [fake_evals([256], 97.0)]}
    }
    old_command = "python examples/toy_reproduction/run.py --out /x --note 'a long paragraph'"
    meta = {"command": old_command, "date": "2026-11-29", "hardware": "cpu", "wall_minutes": 0.01}
    (tmp_path / "results.json").write_text(json.dumps({"config": cfg, "rows": rows, "meta": meta}))
    args = [
        "--out",
        str(tmp_path),
        "--report-only",
        "--report-dir",
        str(tmp_path / "r"),
        "--note",
        "made earlier",
    ]
    assert toy.main(args) == 0
    text = (tmp_path / "r" / "toy_reproduction.md").read_text()
    assert "`python examples/toy_reproduction/run.py --out /x`" in text and "a long paragraph" not in text
    assert "Note: made earlier" in text and "passkey accuracy at P0 = 256: 97%" in text
    assert (tmp_path / "r" / "toy_reproduction.png").is_file()


def test_the_no_finetuning_row_is_named_after_its_scaling(report) -> None:
    assert report.row_label("pi_only", {"scaling": "linear"}) == "pi_only"
    assert report.row_label("pi_only", {"scaling": "yarn"}) == "yarn_only (pi_only)"
    assert report.row_label("pose", {"scaling": "yarn"}) == "pose"
