#!/usr/bin/env python3
"""Long-context evaluation: passkey, RULER-style synthetic tasks and perplexity by length.

  python tools/eval_long_context.py --checkpoint CKPT --tokenizer TOK --tasks passkey,niah_single_1,vt \
      --lengths 1024,2048,4096 --depths 0,0.5,1 --samples 4 --out results/eval

See docs/evaluation.md for every flag, the results.json schema and the lm-evaluation-harness recipe.
"""

import sys

from megatron_endprompt.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
