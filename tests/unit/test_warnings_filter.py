"""The upstream warnings of every launch are filtered in one place (megatron_endprompt/warnings_filter.py), only
those; a launch and its resume printing no noise and our own summary lines once:
tests/integration/test_train_entry_point.py."""

from __future__ import annotations

import warnings

from megatron_endprompt.warnings_filter import UPSTREAM_NOISE, quiet_upstream_warnings


def test_filter_ignores_only_the_listed_messages() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_upstream_warnings()
        warnings.warn(
            "Transformer Engine and Apex are not installed. Falling back to Torch optimizers.", stacklevel=1
        )
        warnings.warn(
            "Please use DTensor instead and we are deprecating ShardedTensor.", FutureWarning, stacklevel=1
        )
        warnings.warn("Apex is not installed. Falling back to Torch Norm", DeprecationWarning, stacklevel=1)
        warnings.warn("something else went wrong", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == ["Apex is not installed. Falling back to Torch Norm", "something else went wrong"]
    assert len(UPSTREAM_NOISE) == 5
