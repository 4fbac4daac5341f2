"""The ``rsclip convert-model`` command: an open_clip/OpenAI checkpoint, or a Hugging Face CLIP saved as
``.bin``, converted into a safetensors ``save_pretrained`` folder (local or ``s3://``) with its conversion
record.

    rsclip convert-model RemoteCLIP-ViT-B-32.pt models/remoteclip-b32 --arch ViT-B-32-quickgelu
"""

from __future__ import annotations

import argparse

from rsclip.app.cli.output import print_json, quiet_model_loading
from rsclip.model.sources import convert_model


def cmd_convert_model(args: argparse.Namespace) -> None:
    """``rsclip convert-model SRC DST``: convert, then print the conversion record (or its summary)."""
    quiet_model_loading()
    record = convert_model(args.source, args.destination, arch=args.arch)
    if args.json:
        print_json(record)
        return
    arch = record["architecture"]
    name = arch["name"] if isinstance(arch, dict) else arch
    print(f"{args.destination}: converted {record['source']} ({record['format']}, {name})")
    for entry in record["source_files"]:
        print(f"  {entry['name']}  sha256 {entry['sha256']}")


def add_convert_parser(sub) -> None:
    """The ``convert-model`` sub-command."""
    cv = sub.add_parser("convert-model", help="convert an open_clip/OpenAI checkpoint or a Hugging Face .bin CLIP "
                                              "into a safetensors save_pretrained folder")
    cv.add_argument("source", metavar="SRC",
                    help="checkpoint file (.pt/.bin, local or s3://) with --arch, open_clip:ARCH:URI, or a "
                         "Hugging Face CLIP folder, s3:// prefix or hub id (hf-bin:SRC)")
    cv.add_argument("destination", metavar="DST", help="new folder or s3:// prefix for the converted model")
    cv.add_argument("--arch", help="open_clip architecture of a checkpoint file: ViT-B-32, ViT-L-14-336, "
                                   "ViT-B-32-quickgelu, ... or an open_clip model-config .json")
    cv.add_argument("--json", action="store_true", help="print the conversion record as JSON")
    cv.set_defaults(run=cmd_convert_model)
