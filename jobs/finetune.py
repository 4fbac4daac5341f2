"""Fine-tune CLIP contrastively on captioned imagery with Ray Train (DDP, global negatives).

    ray job submit --working-dir . -- python jobs/finetune.py --data s3://bucket/rsicd \
        --output s3://bucket/runs/r1 --num-workers 4 --use-gpu --epochs 10 --batch-size 128
    python jobs/finetune.py --config finetune.yaml --output runs/r2 --resume     # local Ray

Every field of ``rsclip.train.config.TrainConfig`` is a flag (``--batch-size``, ``--no-image-aug``, ...) and
may also come from a YAML/JSON file (``--config``); flags win over the file. Prints the run summary as JSON.
Exit status: 0 when the run finished, 2 with one line for an expected failure (bad settings, missing data,
an output that already holds a run without ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a plain script from a checkout or a Ray working_dir
    sys.path.insert(0, ROOT)

from rsclip.runtime import cluster, flags  # noqa: E402
from rsclip.runtime.reporting import run_reporting  # noqa: E402
from rsclip.train.config import TrainConfig  # noqa: E402
from rsclip.train.driver import check_output, run  # noqa: E402

# ``--betas B1 B2``: two numbers after one flag, as this job has always taken them (the generated form of a
# tuple field would be ``B1,B2``)
BETAS = "betas"


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """The run's settings (defaults, then ``--config FILE``, then the flags given) and the Ray address.

    Raises ``InvalidInput`` for settings that do not fit (unknown keys in the file, wrong types)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to use (default: RAY_ADDRESS, set by `ray job submit`; "
                             "without either a private local Ray is started)")
    flags.add_arguments(parser, TrainConfig, exclude=(BETAS,))
    betas = next(f for f in dataclasses.fields(TrainConfig) if f.name == BETAS)
    parser.add_argument("--betas", dest=BETAS, type=float, nargs=2, metavar=("BETA1", "BETA2"), default=None,
                        help=f"{betas.metadata['help']} (default: {' '.join(map(str, betas.default))})")
    args = parser.parse_args(argv)
    given = flags.given_arguments(args, TrainConfig)
    cfg = TrainConfig.from_file(args.config, **given) if args.config else TrainConfig.from_dict(given)
    return cfg, args.address or cluster.job_address()


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        cfg, address = parse_args(argv)
        check_output(cfg.validate())  # before Ray starts: a bad setting costs no cluster start-up
        cluster.start_ray(address)
        print(json.dumps(run(cfg), default=str), flush=True)

    return run_reporting("finetune", work)


if __name__ == "__main__":
    sys.exit(main())
