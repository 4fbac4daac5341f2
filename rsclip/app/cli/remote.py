"""What the commands a running ``rsclip api`` can answer send to it (``--api URL`` or ``$RSCLIP_API``):
``query``, ``review``, ``suggest``, ``export`` and ``label add|remove|list|export``. Each names the DB and table it
was given, so that a service of another table refuses it; what comes back prints (or is written) as the command
prints (or writes) alone."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlencode

from rsclip.app.api import client, settings
from rsclip.errors import LimitExceeded


def add_api_option(parser: argparse.ArgumentParser) -> None:
    """``--api URL`` on a command a running service can answer."""
    parser.add_argument("--api", metavar="URL", help=f"answer through a running `rsclip api` (default: "
                                                     f"${client.API_ENV} when set)")


def query_body(args: argparse.Namespace, filters: dict) -> dict:
    """The search body of ``rsclip query``'s arguments: the same query, options and filters."""
    body = {"k": args.k, "include_self": args.include_self,
            "allow_model_mismatch": args.allow_model_mismatch}
    body.update(client.filter_fields(filters))
    if args.positive or args.negative:
        body.update(positive=args.positive or [], negative=args.negative)
    elif args.image is not None:
        body["image"] = upload(args.image)
    else:
        body["text"] = args.text
    return body


def upload(path: str) -> dict:
    """An image file (local, or an ``s3://`` object read with this machine's credentials: the service opens no
    file a client names) as the API's ``image`` field, at most the upload limit."""
    from rsclip.app.server import MAX_UPLOAD_MB
    from rsclip.runtime import storage

    limit = MAX_UPLOAD_MB * 1024 * 1024
    if storage.is_remote(path):
        return client.image_field(PurePosixPath(path).name, storage.read_bytes(path, max_bytes=limit))
    file = Path(path)
    if file.is_file() and file.stat().st_size > limit:
        raise LimitExceeded(f"{path}: larger than the upload limit of {MAX_UPLOAD_MB} MB")
    return client.image_upload(file)


def route(kind: str, label: str | None = None) -> str:
    """The API path of ``kind`` (``labels``, ``detections``, ``suggest``), of one label set when given (quoted:
    a label is a path segment)."""
    return f"api/{kind}" + (f"/{quote(label, safe='')}" if label else "")


def ask(url: str, path: str, args: argparse.Namespace, body: dict | None = None, method: str | None = None) -> dict:
    """The service's answer to a command on ``args.db`` and ``args.table``: the body (a GET: the query) names
    them, so that a service of another table refuses the command instead of answering for its own."""
    target = {"db": args.db, "table": args.table}
    if body is None:
        return client.call(url, f"{path}{'&' if '?' in path else '?'}{urlencode(target)}", method=method)
    return client.call(url, path, {**body, **target}, method=method)


def ask_query(url: str, args: argparse.Namespace, filters: dict) -> list[dict]:
    """The result rows of ``rsclip query`` answered by the service at ``url``."""
    return ask(url, "api/search", args, query_body(args, filters))["results"]


def ask_review(url: str, args: argparse.Namespace, filters: dict) -> list[dict]:
    """The rows of ``rsclip review`` answered by the service at ``url`` (no ``--min-score``: null, every score;
    ``-k 0``, all: at most a page of the API, and an error when more qualify)."""
    k = args.k or settings.MAX_PAGE
    body = {"min_score": args.min_score, "k": k, **client.filter_fields(filters)}
    answer = ask(url, route("detections", args.label), args, body, "POST")
    if not args.k and answer["matched"] > len(answer["results"]):
        raise LimitExceeded(f"{answer['matched']:,} detections qualify; through the API -k 0 lists at most "
                            f"{settings.MAX_PAGE:,}: raise --min-score, narrow the area or give -k")
    return answer["results"]


def ask_export(url: str, args: argparse.Namespace, body: dict) -> tuple[bytes, int]:
    """The file an export command writes, made by the service at ``url``, and how many features it holds."""
    target = {"db": args.db, "table": args.table}
    data, headers = client.fetch(url, "api/export", {**body, **target})
    return data, int(headers.get(settings.FEATURES_HEADER.lower(), "0"))
