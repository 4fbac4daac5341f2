"""Fine-tune CLIP contrastively on captioned imagery with Ray Train (DDP, global negatives).

    ray job submit --working-dir . -- python jobs/finetune.py --data s3://bucket/rsicd \
        --output s3://bucket/runs/r1 --num-workers 4 --use-gpu --epochs 10 --batch-size 128
    python jobs/finetune.py --config finetune.yaml --output runs/r2 --resume     # local Ray

Every setting of ``rsclip.train.TrainConfig`` is a flag (``--batch-size``, ``--no-image-aug``, ...) and may
also come from a YAML/JSON file (``--config``); flags win over the file. Prints the run summary as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsclip.core.cluster import start_ray  # noqa: E402
from rsclip.train.loop import TrainConfig, check_output, run  # noqa: E402

HELP = {
    "data": "training data: an RSICD folder/JSON or a Parquet/CSV/JSONL manifest, local or s3:// (repeatable)",
    "val_data": "validation data (default: the val split of --data) (repeatable)",
    "output": "where checkpoints, metrics and the exported model go (local or s3://)",
    "model": "starting model: hub id, save_pretrained folder or s3:// prefix",
    "batch_size": "per-worker batch; the global batch (all workers) gives the negatives",
    "checkpoint_every_steps": "also checkpoint every N optimiser steps (0: only each epoch)",
    "max_steps": "stop after N optimiser steps (with a checkpoint; continue later with --resume)",
    "precision": "auto (bf16/fp16 autocast on GPU, fp32 on CPU), bf16, fp16 or fp32",
    "resume": "continue the run in --output from its latest checkpoint",
    "best_metric": "validation metric that picks the best checkpoint (exported as OUTPUT/model)",
}


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to use (default: RAY_ADDRESS, set by `ray job submit`; "
                             "without either a private local Ray is started)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = HELP.get(f.name, "") + f" (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(default, list):
            parser.add_argument(flag, action="append", default=None, help=text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=float, nargs=len(default), default=None, help=text)
        else:
            parser.add_argument(flag, type=type(default), default=None, help=text)
    args = vars(parser.parse_args(argv))
    config_file, address = args.pop("config"), args.pop("address")
    given = {k: v for k, v in args.items() if v is not None}
    cfg = TrainConfig.from_file(config_file, **given) if config_file else TrainConfig.from_dict(given)
    return cfg, address or os.environ.get("RAY_ADDRESS") or None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg, address = parse_args(argv)
        check_output(cfg.validate())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start_ray(address)
    try:
        summary = run(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
