"""The demo corpus: deterministic; stories mixed with retrieval tasks in the eval's templates + answers."""

import json
import re

import pytest

from megatron_endprompt.demo_corpus import CorpusConfig, generate_documents, main
from megatron_endprompt.eval.tasks import passkey


def test_deterministic_and_seed_dependent() -> None:
    cfg = CorpusConfig(documents=200, seed=3)
    assert list(generate_documents(cfg)) == list(generate_documents(cfg))
    assert list(generate_documents(cfg)) != list(generate_documents(CorpusConfig(documents=200, seed=4)))


def test_retrieval_documents_carry_their_answer() -> None:
    docs = list(generate_documents(CorpusConfig(documents=400, retrieval_fraction=1.0, passkey_max=999)))
    pk = [d for d in docs if d.startswith(passkey.INSTRUCTION)]
    magic = [d for d in docs if "special magic numbers for" in d]
    recall = [d for d in docs if d.startswith("Remember the numbers.")]
    assert pk and magic and recall and len(pk) + len(magic) + len(recall) == len(docs)
    for d in pk:
        key = re.search(r"The pass key is (\d+)\. Remember it\.", d).group(1)
        assert d.endswith(f"{passkey.QUESTION} {key}.") and 1 <= int(key) <= 999
    for d in magic:
        needles = dict(re.findall(r"special magic numbers for (\S+) is: (\d{7})\.", d))
        asked = re.findall(r"mentioned in the provided text is (\d+)\.", d)
        assert sorted(asked) == sorted(needles.values())  # every needle is asked for, with its own value
    for d in recall:
        pairs = dict(re.findall(r"The number for (\S+) is (\d+)\.", d))
        asked = dict(re.findall(r"What is the number for (\S+)\? It is (\d+)\.", d))
        assert asked == pairs and len(pairs) >= 2


def test_mix_and_validation(tmp_path) -> None:
    docs = list(generate_documents(CorpusConfig(documents=1000, retrieval_fraction=0.5)))
    share = sum("pass key" in d or "magic number" in d or "Remember the numbers" in d for d in docs) / len(
        docs
    )
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="--max-words"):
        CorpusConfig(min_words=10, max_words=5).validate()
    main(["--out", str(tmp_path / "c.jsonl"), "--documents", "5"])
    assert len([json.loads(x)["text"] for x in (tmp_path / "c.jsonl").read_text().splitlines()]) == 5


def test_repeat_documents_say_the_same_list_twice() -> None:
    docs = list(generate_documents(CorpusConfig(documents=600, repeat_fraction=0.5, value_digits=3)))
    repeats = [d for d in docs if d.startswith("Say the list again.")]
    assert 0.4 < len(repeats) / len(docs) < 0.6
    for d in repeats:
        first, second = re.fullmatch(r"Say the list again\. (.+)\. Again: (.+)\.", d).groups()
        assert first == second and 4 <= len(first.split()) <= 24
        assert all(len(w) <= 3 for w in first.split() if w.isdigit())
    # off by default: the demo corpus keeps its mix
    default = list(generate_documents(CorpusConfig(documents=50)))
    assert not any(d.startswith("Say the list again.") for d in default)
    with pytest.raises(ValueError, match="--repeat-fraction"):
        CorpusConfig(repeat_fraction=1.5).validate()


def test_passkey_weight_shifts_the_retrieval_mix() -> None:
    def passkey_share(weight: float) -> float:
        cfg = CorpusConfig(documents=900, retrieval_fraction=1.0, passkey_weight=weight)
        return sum(d.startswith(passkey.INSTRUCTION) for d in generate_documents(cfg)) / cfg.documents

    assert 0.25 < passkey_share(1.0) < 0.42 and 0.58 < passkey_share(4.0) < 0.75
    assert passkey_share(0.0) == 0.0
    with pytest.raises(ValueError, match="--passkey-weight"):
        CorpusConfig(passkey_weight=-1).validate()


def test_passkey_corpus_holds_passkey_documents_only(tmp_path) -> None:
    from megatron_endprompt.demo_corpus import write_passkey_corpus

    cfg = CorpusConfig(documents=50, max_words=20, passkey_max=99, seed=5)
    path = write_passkey_corpus(tmp_path / "warm.jsonl", cfg)
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert len(texts) == 50 and all(t.startswith(passkey.INSTRUCTION) for t in texts)
    for text in texts:  # the needle's key is the answer at the end, within 1..passkey_max
        key = re.search(r"The pass key is (\d+)\. Remember it", text).group(1)
        assert text.endswith(f"{passkey.QUESTION} {key}.") and 1 <= int(key) <= 99
    assert write_passkey_corpus(tmp_path / "again.jsonl", cfg).read_text() == path.read_text()
    with pytest.raises(ValueError, match="--max-words"):
        write_passkey_corpus(tmp_path / "bad.jsonl", CorpusConfig(min_words=30, max_words=20))
