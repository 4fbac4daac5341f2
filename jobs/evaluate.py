"""Evaluate CLIP models on captioned, labelled scenes: the seed's zero-shot top-k and retrieval recall.

    python jobs/evaluate.py --model openai/clip-vit-base-patch32 --model s3://bucket/runs/r1/model \
        --data s3://bucket/rsicd --split test
    python jobs/evaluate.py --model runs/r1/model --data ../shared/data/rsicd-aid --split val --json

Prints a markdown table (one row per model); with ``--json`` one JSON object per model (keys ``top1,
top3, top5, top10, top1_ensemble, i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR, n_images``).
Every field of ``EvalConfig`` is a flag. Exit status 2 with one line for an expected failure (a model or
data set that is not there or not readable, no samples in the split).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a plain script from a checkout or a Ray working_dir
    sys.path.insert(0, ROOT)

from rsclip.runtime import flags  # noqa: E402
from rsclip.model.clip import load_model  # noqa: E402
from rsclip.errors import InvalidInput  # noqa: E402
from rsclip.runtime.reporting import run_reporting  # noqa: E402
from rsclip.train.data import TEST, read_samples  # noqa: E402
from rsclip.train.metrics import METRIC_KEYS, evaluate_samples, format_markdown  # noqa: E402

setting = flags.setting


@dataclass
class EvalConfig:
    """What to evaluate: models (one row each) on the samples of one split of the data."""

    model: list[str] = setting(default_factory=list,
                               help="hub id, save_pretrained folder or s3:// prefix (repeatable: one row each)")
    data: list[str] = setting(default_factory=list,
                              help="RSICD folder/JSON or manifest, local or s3:// (repeatable: combined)")
    split: str = setting(TEST, help="which split to score")
    device: str | None = setting(None, help="cpu or cuda (default: cuda when available)")
    json: bool = setting(False, help="print one JSON object per model")


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    """The evaluation's settings from the command line (``--model`` and ``--data`` required)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_arguments(parser, EvalConfig, required=("model", "data"))
    return flags.from_arguments(parser.parse_args(argv), EvalConfig)


def evaluate(cfg: EvalConfig) -> dict[str, dict]:
    """The metrics of each model of ``cfg`` by its source; raises ``InvalidInput`` for no samples."""
    samples = read_samples(cfg.data, split=cfg.split)
    if not samples:
        raise InvalidInput(f"no '{cfg.split}' samples with captions in {', '.join(cfg.data)}")
    return {source: evaluate_samples(load_model(source, device=cfg.device), samples) for source in cfg.model}


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        cfg = parse_args(argv)
        rows = evaluate(cfg)
        if cfg.json:
            for m in rows.values():
                print(json.dumps({k: m[k] for k in METRIC_KEYS}), flush=True)
            return
        print(format_markdown(rows), flush=True)
        skipped = sum(m["skipped_images"] for m in rows.values())
        if skipped:
            print(f"\n{skipped} unreadable images skipped", file=sys.stderr)

    return run_reporting("evaluate", work)


if __name__ == "__main__":
    sys.exit(main())
