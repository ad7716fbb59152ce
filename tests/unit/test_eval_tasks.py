"""Task generators: deterministic per seed, exact token lengths, needles at the requested token depth."""

import collections
import re

import pytest

from megatron_endprompt.data.tokenizers import load_tokenizer, train_sentencepiece
from megatron_endprompt.eval.corpus import task_texts
from megatron_endprompt.eval.tasks import TASKS, get_task, make_sample

ALL_TASKS = sorted(TASKS)
SINGLE_NEEDLE = ["passkey", "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_2"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("sp") / "tasks"
    return load_tokenizer("SentencePieceTokenizer", train_sentencepiece(task_texts(per_task=2), prefix, 1024))


def test_same_seed_same_sample_other_seed_other_sample(tok):
    for task in ALL_TASKS:
        a = make_sample(task, tok, 1024, 0.5, seed=3, index=1)
        assert a == make_sample(task, tok, 1024, 0.5, seed=3, index=1), task
        assert a.prompt_ids != make_sample(task, tok, 1024, 0.5, seed=4, index=1).prompt_ids, task
        assert a.prompt_ids != make_sample(task, tok, 1024, 0.5, seed=3, index=2).prompt_ids, task


@pytest.mark.parametrize("length", [1024, 2048])
def test_prompt_has_requested_token_length(tok, length):
    for task in ALL_TASKS:
        sample = make_sample(task, tok, length, 0.3, seed=0)
        assert 0.99 * length <= len(sample.prompt_ids) <= length, (task, len(sample.prompt_ids))
        assert sample.prompt_ids == [tok.bos] + tok.encode(sample.prompt_text)


def test_needle_sits_at_requested_depth_in_tokens(tok):
    for task in SINGLE_NEEDLE:
        for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
            s = make_sample(task, tok, 2048, depth, seed=1)
            start, value = s.needle_depth_tokens, s.answers[0]
            # independent check of the token index: the value is not before it, and is right after it
            assert value not in tok.decode(s.prompt_ids[:start]), (task, depth)
            assert value in tok.decode(s.prompt_ids[start : start + 60]), (task, depth)
            ctx_start, ctx_end = s.metadata["context_span_tokens"]
            assert ctx_start <= start <= ctx_end
            assert s.metadata["needle_depth_fraction"] == pytest.approx(depth, abs=0.03), (task, depth)


def test_answers_are_hidden_in_the_prompt(tok):
    for task in ALL_TASKS:
        s = make_sample(task, tok, 2048, 0.5, seed=2)
        assert s.answers and all(a in s.prompt_text for a in s.answers), task
        assert s.metadata["max_new_tokens"] == get_task(task).max_new_tokens


def test_aggregation_answers_are_the_most_frequent_words(tok):
    s = make_sample("cwe", tok, 2048, None, seed=5)
    listing = s.prompt_text.rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion")[0]
    counts = collections.Counter(re.findall(r"\d+\. (\w+)", listing))
    assert len(s.answers) == 10
    assert min(counts[a] for a in s.answers) > max(c for w, c in counts.items() if w not in s.answers)
    f = make_sample("fwe", tok, 2048, None, seed=5)
    coded = f.prompt_text.split("coded words. ", 1)[1].split("\nQuestion")[0].split()
    top = [w for w, _ in collections.Counter(w for w in coded if w != "...").most_common(4)]
    assert top[:3] == f.answers and collections.Counter(coded)[top[2]] > collections.Counter(coded)[top[3]]


def test_multi_needle_variants_hide_every_needle(tok):
    s = make_sample("niah_multivalue", tok, 2048, 0.5, seed=0)
    assert len(s.answers) == 4 and len(s.metadata["needle_starts_tokens"]) == 4
    q = make_sample("niah_multiquery", tok, 2048, 0.5, seed=0)
    assert len(q.answers) == 4 and "are all the special magic numbers for" in q.prompt_text
    k = make_sample("niah_multikey_1", tok, 2048, 0.5, seed=0)
    assert len(k.answers) == 1 and k.prompt_text.count("One of the special magic numbers for") == 4
    v = make_sample("vt", tok, 2048, None, seed=0)
    chain = [
        m.start() for m in (re.search(f"VAR {n} =", v.prompt_text.rsplit("\n\n", 2)[-1]) for n in v.answers)
    ]
    assert chain == sorted(chain)  # assignments appear in chain order


def test_bad_requests_fail_clearly(tok):
    with pytest.raises(ValueError, match="--tasks: unknown task 'nope'"):
        make_sample("nope", tok, 1024, 0.5, 0)
    with pytest.raises(ValueError, match="--lengths: 40 tokens is too short for task 'passkey'"):
        make_sample("passkey", tok, 40, 0.5, 0)
    assert get_task("ruler_vt").name == "vt"


def test_task_options_bound_passkey_keys_and_niah_digits(tok):
    keys = {
        make_sample("passkey", tok, 512, 0.5, seed=s, options={"key_max": 999}).answers[0] for s in range(40)
    }
    assert all(1 <= int(k) <= 999 for k in keys) and len(keys) > 20
    default = [make_sample("passkey", tok, 512, 0.5, seed=s).answers[0] for s in range(40)]
    assert any(int(k) > 999 for k in default)  # the standard 1..50000 range is the default
    three = make_sample("niah_single_1", tok, 512, 0.5, seed=0, options={"number_digits": 3})
    assert re.fullmatch(r"\d{3}", three.answers[0])
    assert three.answers[0] in three.prompt_text
    assert re.fullmatch(r"\d{7}", make_sample("niah_single_1", tok, 512, 0.5, seed=0).answers[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"passkey": {"digits": 3}},
            r"--task-option passkey.digits: unknown option; passkey accepts \['key_max'\]",
        ),
        ({"passkey": {"key_max": "9"}}, "expected int"),
        ({"vt": {"key_max": 9}}, "vt accepts none"),
        ({"nope": {"key_max": 9}}, "--tasks: unknown task 'nope'"),
    ],
)
def test_bad_task_options_name_the_flag(options, message):
    from megatron_endprompt.eval.tasks import validate_task_options

    with pytest.raises(ValueError, match=message):
        validate_task_options(options)


def test_out_of_range_task_options_are_refused(tok):
    with pytest.raises(ValueError, match="key_max must be >= 1"):
        make_sample("passkey", tok, 512, 0.5, seed=0, options={"key_max": 0})
    with pytest.raises(ValueError, match=r"number_digits must be in \[1, 18\]"):
        make_sample("niah_single_1", tok, 512, 0.5, seed=0, options={"number_digits": 0})
