"""The `te` group skips where Transformer Engine is not importable, unless CI asks for it.

With MEGATRON_ENDPROMPT_REQUIRE_TE=1 (set by .ci/run inside the TE venv) a missing or broken TE is an error,
so that the group cannot pass by skipping.
"""

import os

import torch  # noqa: F401 - before transformer_engine: torch loads the CUDA libraries TE links against

if os.environ.get("MEGATRON_ENDPROMPT_REQUIRE_TE") == "1":
    import transformer_engine.pytorch  # noqa: F401 - fails the collection when TE cannot be imported
