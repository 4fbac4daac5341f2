"""rsclip.classify against a direct computation with the model's own towers and temperature."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import rsclip
from rsclip.app.cli import main
from rsclip.errors import NotFound
from rsclip.model.clip import load_model
from rsclip.model.prompts import SEED_TEMPLATE, TEMPLATES
from rsclip.table import tiles
from rsclip.testing import build_tiny_clip

LABELS = ["airport", "bare_land", "beach", "dense residential"]


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def images(rsicd_files):
    return [rsicd_files[i] for i in (0, 300, 900, 1500)]


def direct(encoder, images, labels, templates, scale):
    """CLIP's recipe written out: mean of unit prompt embeddings per label, renormalised, softmax."""
    with torch.no_grad():
        pixels = encoder.preprocess([np.asarray(Image.open(p).convert("RGB")) for p in images])
        img = encoder.model.get_image_features(pixel_values=pixels).pooler_output
        img = torch.nn.functional.normalize(img.double(), dim=-1)
        rows = []
        for label in labels:
            prompts = [t.format(label.replace("_", " ")) if len(templates) > 1 else t.format(label) for t in templates]
            tok = encoder.tokenizer(prompts, padding=True, return_tensors="pt")
            txt = encoder.model.get_text_features(**tok).pooler_output
            txt = torch.nn.functional.normalize(txt.double(), dim=-1).mean(dim=0)
            rows.append(torch.nn.functional.normalize(txt, dim=0))
        logits = scale * img @ torch.stack(rows).T
    return torch.softmax(logits, dim=1).numpy()


def test_classify_equals_direct_computation(encoder, images):
    got = rsclip.classify(images, LABELS, model=encoder)
    scale = float(encoder.model.logit_scale.detach().exp())
    want = direct(encoder, images, LABELS, TEMPLATES, scale)
    np.testing.assert_allclose(got[LABELS].to_numpy(), want, atol=1e-5)
    np.testing.assert_allclose(got[LABELS].sum(axis=1), 1.0, atol=1e-9)
    assert got["label"].tolist() == [LABELS[i] for i in want.argmax(axis=1)]


def test_seed_template_and_fixed_scale(encoder, images):
    got = rsclip.classify(images, LABELS, model=encoder, templates=(SEED_TEMPLATE,), logit_scale=100.0)
    np.testing.assert_allclose(got[LABELS].to_numpy(), direct(encoder, images, LABELS, (SEED_TEMPLATE,), 100.0),
                               atol=1e-5)


def test_single_image_inputs_agree(encoder, images):
    array = np.asarray(Image.open(images[1]).convert("RGB"))
    by_path = rsclip.classify(images[1], LABELS, model=encoder)
    by_str = rsclip.classify(str(images[1]), LABELS, model=encoder)
    by_array = rsclip.classify(array, LABELS, model=encoder)
    by_pil = rsclip.classify(Image.fromarray(array), LABELS, model=encoder)
    assert len(by_path) == 1
    for other in (by_str, by_array, by_pil):
        np.testing.assert_allclose(other[LABELS].to_numpy(), by_path[LABELS].to_numpy(), atol=1e-6)


def test_model_given_as_a_path(tiny_model, encoder, images):
    a = rsclip.classify(images[:2], LABELS, model=str(tiny_model))
    b = rsclip.classify(images[:2], LABELS, model=encoder)
    np.testing.assert_allclose(a[LABELS].to_numpy(), b[LABELS].to_numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=["airport"]), "at least two"),
        (dict(labels=["airport", "airport"]), "distinct"),
        (dict(labels=["airport", " "]), "non-empty"),
        (dict(labels=["a", "b"], templates=("no placeholder",)), "exactly one"),
        (dict(labels=["a", "b"], templates=()), "templates"),
        (dict(labels=["a", "b"], logit_scale=0.0), "positive"),
        (dict(labels=["a", "b"], images=[]), "no images"),
        (dict(labels=["a", "b"], images=["/nonexistent/x.jpg"]), "x.jpg"),
        (dict(labels=["a", "b"], images=[3.5]), "expected an image"),
    ],
)
def test_bad_input(encoder, images, kwargs, message):
    kwargs.setdefault("images", images[:1])
    with pytest.raises(ValueError, match=message):
        rsclip.classify(kwargs.pop("images"), model=encoder, **kwargs)


def test_without_a_model_the_tables_model_classifies(tmp_path, tiny_model, images, capsys):
    """Issues 24 and 25: given a table (``db``, ``--db``), its own model classifies, not the hub's default."""
    own = build_tiny_clip(tmp_path / "own", seed=3)
    db = tmp_path / "db"
    tiles.create_table(db, model=str(own), dim=32)
    by_table = rsclip.classify(images[:2], LABELS, db=db)
    np.testing.assert_allclose(by_table[LABELS].to_numpy(),
                               rsclip.classify(images[:2], LABELS, model=str(own))[LABELS].to_numpy(), atol=1e-6)
    other = rsclip.classify(images[:2], LABELS, model=str(tiny_model))[LABELS].to_numpy()
    assert np.abs(by_table[LABELS].to_numpy() - other).max() > 1e-4  # so the check above could fail
    capsys.readouterr()
    assert main(["classify", *map(str, images[:2]), "--labels", *LABELS, "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([[r[lb] for lb in LABELS] for r in rows], by_table[LABELS].to_numpy(), atol=1e-6)
    with pytest.raises(NotFound, match="unknown table 'nope'"):
        rsclip.classify(images[:2], LABELS, db=db, table="nope")
