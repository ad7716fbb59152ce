"""EndPromptTransformerConfig: our settings are typed fields, and its `yarn_*` names are the ones megatron reads."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from megatron.core.models.common.embeddings import yarn_rotary_pos_embedding
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import build_model, to_transformer_config
from megatron_endprompt.model.transformer_config import EndPromptTransformerConfig
from megatron_endprompt.parallel import initialize

OUR_FIELDS = {
    "ep_sdpa_backend",
    "ep_rope_fusion",
    "ep_ce_chunk_size",
    "yarn_rotary_scaling_factor",
    "yarn_mscale",
    "yarn_mscale_all_dim",
}


def test_fields_are_declared_on_the_subclass_only():
    ours = {f.name for f in dataclasses.fields(EndPromptTransformerConfig)}
    theirs = {f.name for f in dataclasses.fields(TransformerConfig)}
    assert ours - theirs == OUR_FIELDS


def test_yarn_field_names_are_what_megatron_reads():
    """megatron's attention scales cos/sin by `_yarn_get_concentration_factor_from_config(config)`: a renamed
    field upstream would silently drop YaRN's attention factor."""
    source = inspect.getsource(yarn_rotary_pos_embedding._yarn_get_concentration_factor_from_config)
    for name in ("yarn_rotary_scaling_factor", "yarn_mscale", "yarn_mscale_all_dim"):
        assert f"config.{name}" in source or f'"{name}"' in source, name
    plain = to_transformer_config(get_preset("tiny"))  # no rope scaling: factor 1 -> no concentration
    assert yarn_rotary_pos_embedding._yarn_get_concentration_factor_from_config(plain) == 1.0


def test_config_is_typed_and_settings_are_fields():
    config = to_transformer_config(get_preset("tiny"), sdpa_backend="math", ce_chunk_size=8)
    assert isinstance(config, EndPromptTransformerConfig)
    assert (config.ep_sdpa_backend, config.ep_rope_fusion, config.ep_ce_chunk_size) == ("math", "auto", 8)
    assert "ep_sdpa_backend" not in vars(TransformerConfig)


def test_a_plain_transformer_config_is_refused():
    initialize(tp=1, pp=1, cp=1, seed=1234)
    typed = to_transformer_config(get_preset("tiny"))
    plain = TransformerConfig(
        **{f.name: getattr(typed, f.name) for f in dataclasses.fields(TransformerConfig) if f.init}
    )
    with pytest.raises(TypeError, match="EndPromptTransformerConfig"):
        build_model(get_preset("tiny"), config=plain)
