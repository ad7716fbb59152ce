"""A broken YAML recipe ends in exit 2 with `file:line:column: problem`, never a traceback (issue 17); the CLI's
exit: tests/integration/test_train_entry_point.py."""

from __future__ import annotations

import pytest

from megatron_endprompt.training.config import load_config

UNCLOSED_LIST = "model:\n  preset: tiny\noptimizer:\n  lr: [1.0e-3\ntraining:\n  train_iters: 3\n"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(UNCLOSED_LIST)
    with pytest.raises(ValueError) as err:
        load_config(recipe)
    msg = str(err.value)
    assert msg.startswith(f"{recipe}:5:") and "YAML syntax error" in msg, msg
    assert "started at line 4" in msg  # where the unclosed list began


def test_yaml_tab_indentation_names_the_line(tmp_path):
    recipe = tmp_path / "tabs.yaml"
    recipe.write_text("model:\n\tpreset: tiny\n")
    with pytest.raises(ValueError, match=rf"^{recipe}:2:1: YAML syntax error: found character '\\t'"):
        load_config(recipe)


def test_yaml_syntax_error_in_a_base_recipe_names_the_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("optimizer: {lr: 1.0e-3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel: {preset: tiny}\n")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'base.yaml'}:2:"):
        load_config(tmp_path / "child.yaml")


def test_recipe_that_is_not_utf8_names_the_file(tmp_path):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("model: {preset: tiny}  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^{recipe}: not UTF-8 text"):
        load_config(recipe)


def test_override_value_with_yaml_syntax_error_names_the_flag():
    with pytest.raises(ValueError, match=r"^--data.paths: cannot parse '\[a, b' as YAML"):
        load_config(None, ["--data.paths", "[a, b"])
