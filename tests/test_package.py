"""The ``rsclip`` package: public names resolve lazily, decode workers stay light, functions keep their names."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT


def _python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_decode_stage_modules_import_neither_torch_nor_lancedb():
    """Ray's read tasks import these modules in every worker process; torch, transformers and LanceDB would
    add seconds to each worker's start (see BENCHMARKS.md, Embedding)."""
    loaded = _python(
        "import json, sys\n"
        "import rsclip.ingest.planning, rsclip.ingest.reading, rsclip.train.data, rsclip.model.preprocess\n"
        "import rsclip.geo.raster, rsclip.geo.images, rsclip.train.transforms, rsclip.train.seeds\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'transformers', 'lancedb')}))"
    )
    assert loaded == {"torch": False, "transformers": False, "lancedb": False}


def test_public_names_resolve_and_query_locate_stay_functions_after_their_modules_load():
    kinds = _python(
        "import json, importlib, rsclip\n"
        "import rsclip.search.query, rsclip.search.locate\n"
        "from rsclip import classify, build_index\n"
        "mod = importlib.import_module('rsclip.search.query')\n"
        "print(json.dumps({'query': type(rsclip.query).__name__, 'locate': type(rsclip.locate).__name__,\n"
        "    'classify': callable(classify), 'build_index': callable(build_index),\n"
        "    'module': type(mod).__name__, 'module_fn': mod.query is rsclip.query,\n"
        "    'all': sorted(rsclip.__all__) == sorted(n for n in rsclip.__all__ if hasattr(rsclip, n)),\n"
        "    'table': rsclip.DEFAULT_TABLE}))"
    )
    assert kinds == {"query": "function", "locate": "function", "classify": True, "build_index": True,
                     "module": "module", "module_fn": True, "all": True, "table": "tiles"}


def test_unknown_name_is_an_attribute_error():
    err = _python(
        "import json, rsclip\n"
        "try:\n    rsclip.no_such_name\nexcept AttributeError as exc:\n    print(json.dumps({'error': str(exc)}))"
    )
    assert "no_such_name" in err["error"]
