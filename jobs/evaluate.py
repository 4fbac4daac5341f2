"""Evaluate CLIP models on captioned, labelled scenes: the seed's zero-shot top-k and retrieval recall.

    python jobs/evaluate.py --model openai/clip-vit-base-patch32 --model s3://bucket/runs/r1/model \
        --data s3://bucket/rsicd --split test
    python jobs/evaluate.py --model runs/r1/model --data ../shared/data/rsicd-aid --split val --json

Prints a markdown table (one row per model); with ``--json`` one JSON object per model (keys ``top1,
top3, top5, top10, top1_ensemble, i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR, n_images``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsclip.train.data import read_samples  # noqa: E402
from rsclip.train.metrics import METRIC_KEYS, evaluate_samples, format_markdown  # noqa: E402
from rsclip.core.model import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True,
                        help="hub id, save_pretrained folder or s3:// prefix (repeatable: one row each)")
    parser.add_argument("--data", action="append", required=True,
                        help="RSICD folder/JSON or manifest, local or s3:// (repeatable: combined)")
    parser.add_argument("--split", default="test", help="which split to score (default: test)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per model")
    args = parser.parse_args(argv)
    try:
        samples = read_samples(args.data, split=args.split)
        if not samples:
            raise ValueError(f"no '{args.split}' samples with captions in {', '.join(args.data)}")
        rows = {}
        for source in args.model:
            rows[source] = evaluate_samples(load_model(source, device=args.device), samples)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for m in rows.values():
            print(json.dumps({k: m[k] for k in METRIC_KEYS}))
    else:
        print(format_markdown(rows))
        skipped = sum(m["skipped_images"] for m in rows.values())
        if skipped:
            print(f"\n{skipped} unreadable images skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
