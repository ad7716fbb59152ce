"""Training entry point.

    torchrun --nproc-per-node 8 -m megatron_endprompt.train --config examples/llama3_8b_endprompt_64k.yaml \\
        --checkpoint.save runs/ep64k --optimizer.lr 2e-5
    python -m megatron_endprompt.train --config examples/tiny_cpu.yaml            # one process, world size 1
    python -m megatron_endprompt.train --config RECIPE.yaml --dry-run --dry-run-world-size 64

Overrides: `--section.key value` (or `--key value` when the key is unique across sections); see
docs/training.md for every field. Exit codes: 0 success, 2 invalid configuration, 3 NaN/Inf loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from megatron_endprompt.training.config import TrainConfig, load_config
from megatron_endprompt.warnings_filter import quiet_upstream_warnings

EXIT_CONFIG = 2
EXIT_NONFINITE = 3


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_endprompt.train",
        description="Train a LLaMA-family model with EndPrompt data on megatron-core.",
        epilog="Any other --section.key value pair overrides the recipe (e.g. --optimizer.lr 1e-5).",
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML recipe (see examples/); omit to start from defaults")
    parser.add_argument("--dry-run", action="store_true", help="validate, print layout/FLOPs/memory, exit")
    parser.add_argument(
        "--dry-run-world-size", type=int, default=None, help="world size assumed by --dry-run"
    )
    parser.add_argument("--dry-run-json", action="store_true", help="print the dry-run report as JSON")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML first")
    return parser.parse_known_args(argv)


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # megatron-core logs every parameter name and its whole optimizer config at INFO.
    logging.getLogger("megatron.core").setLevel(logging.WARNING)


def _dry_run(cfg: TrainConfig, as_json: bool) -> None:
    from megatron_endprompt.training import dry_run

    report = dry_run.report(cfg)
    print(json.dumps(report, indent=2) if as_json else dry_run.format_report(report))


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    quiet_upstream_warnings()  # before megatron.core is imported: it warns while importing
    _setup_logging()
    try:
        cfg = load_config(args.config, overrides)
        world = args.dry_run_world_size if args.dry_run else None
        cfg.validate(
            world if world is not None else int(os.environ.get("WORLD_SIZE", "1")),
            check_environment=not args.dry_run,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if args.dry_run:
        _dry_run(cfg, args.dry_run_json)
        return 0
    from megatron_endprompt.training.loop import train
    from megatron_endprompt.training.metrics import NonFiniteLossError

    try:
        train(cfg)
    except NonFiniteLossError as exc:
        logging.getLogger("megatron_endprompt.train").error("%s", exc)
        return EXIT_NONFINITE
    except (ValueError, NotImplementedError, FileNotFoundError) as exc:  # found once files are opened
        logging.getLogger("megatron_endprompt.train").error("%s", exc)
        return EXIT_CONFIG
    return 0


if (
    __name__ == "__main__"
):  # guard needed: megatron's checkpoint writer starts a spawn multiprocessing manager
    sys.exit(main())
