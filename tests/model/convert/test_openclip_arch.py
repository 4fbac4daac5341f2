"""The architecture table and the tokenizer of converted models, checked against open_clip's own files (the
open-clip-torch wheel: model configs and BPE vocabulary) and an independent SimpleTokenizer."""

from __future__ import annotations

import json

import pytest

from rsclip.model.clip_bpe import EOT_ID, VOCAB_SIZE, build_tokenizer
from rsclip.model.convert.openclip_arch import KNOWN_CONFIGS, QUICKGELU_SUFFIX, parse_config, resolve_architecture
from rsclip.errors import InvalidInput
from tests.helpers import openclip_reference as ref
from tests.helpers import RSICD_DIR, require_shared_data

# strings the captions do not have: digits, apostrophes, punctuation runs, case, spacing, a very long text
EXTRA_TEXTS = ["It's 3 planes, 12 cars & 1 ship!!", "   MANY   green\ttrees;  near a river-bank  ",
               "they'll park... what's that?", "building " * 100]


def _fields(arch) -> dict:
    return dict(embed=arch.embed_dim, image=arch.image_size, patch=arch.patch_size, vw=arch.vision_width,
                vl=arch.vision_layers, vh=arch.vision_heads, vmlp=arch.vision_mlp, tw=arch.text_width,
                tl=arch.text_layers, th=arch.text_heads, tmlp=arch.text_mlp, ctx=arch.context_length,
                vocab=VOCAB_SIZE, quick_gelu=arch.quick_gelu)


@pytest.mark.parametrize("name", sorted(KNOWN_CONFIGS))
def test_known_architectures_are_open_clips(name):
    assert _fields(resolve_architecture(name)) == ref.sizes(ref.wheel_config(name))
    quick = name + QUICKGELU_SUFFIX
    want = ref.wheel_config(quick) if quick in ref.wheel_config_names() else {**ref.wheel_config(name),
                                                                               "quick_gelu": True}
    assert _fields(resolve_architecture(quick)) == ref.sizes(want)


def test_every_open_clip_config_is_expressed_or_refused_by_name():
    """All of open_clip's configs: a plain ViT CLIP resolves to its sizes; anything else is refused with
    InvalidInput naming the setting (never a crash, never a silent approximation)."""
    resolved, refused = [], []
    for name in ref.wheel_config_names():
        cfg = ref.wheel_config(name)
        try:
            arch = parse_config(cfg, name)
        except InvalidInput as exc:
            refused.append(name)
            assert name in str(exc) and ("cannot be expressed" in str(exc) or "ResNet" in str(exc)
                                         or "not an open_clip setting" in str(exc) or "vocab" in str(exc)), exc
            continue
        resolved.append(name)
        assert _fields(arch) == ref.sizes(cfg), name
    assert {"ViT-B-32", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14-quickgelu"} <= set(resolved)
    assert {"RN50", "ViT-B-16-SigLIP", "ViT-H-14-CLIPA", "EVA02-B-16", "MobileCLIP-S1"} <= set(refused)


@pytest.mark.parametrize("name, reason", [
    ("RN50", "ResNet"), ("RN50x64-quickgelu", "ResNet"), ("ViT-B-32-SigLIP", "unknown architecture"),
])
def test_unsupported_names_refused(name, reason):
    with pytest.raises(InvalidInput, match=reason):
        resolve_architecture(name)


def test_config_file_settings_clip_cannot_express(tmp_path):
    base = ref.wheel_config("ViT-B-32")
    cases = {"pool": ("vision_cfg", "pool_type", "avg"), "ls": ("text_cfg", "ls_init_value", 1e-5),
             "hf": ("text_cfg", "hf_model_name", "roberta-base"), "square": ("vision_cfg", "image_size", [224, 256])}
    for case, (section, key, value) in cases.items():
        cfg = json.loads(json.dumps(base))
        cfg[section][key] = value
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(cfg))
        with pytest.raises(InvalidInput, match=f"{section}.{key}"):
            resolve_architecture(str(path))
    with pytest.raises(InvalidInput, match="init_logit_bias"):
        parse_config({**base, "init_logit_bias": -10}, "siglip-like")


def _captions() -> list[str]:
    require_shared_data()
    data = json.loads((RSICD_DIR / "dataset_rsicd.json").read_text())
    return sorted({s["raw"] for im in data["images"] for s in im["sentences"]})


def test_tokenizer_matches_open_clip_on_the_captions(tmp_path):
    """The converted models' tokenizer (saved and reloaded as plain transformers loads it) gives open_clip's
    ids and end-of-text position for every caption of the shared data."""
    from transformers import AutoTokenizer

    build_tokenizer(resolve_architecture("ViT-B-32").context_length).save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    reference = ref.ReferenceTokenizer(ref.wheel_bpe())
    texts = _captions() + EXTRA_TEXTS
    assert len(texts) > 3000
    want = reference(texts)
    got = hf(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    eos = (got == EOT_ID).int().argmax(dim=1)  # where transformers' CLIP pools
    assert (eos == want.argmax(dim=1)).all()  # where open_clip pools
    for row, end in enumerate(eos.tolist()):
        assert got[row, : end + 1].tolist() == want[row, : end + 1].tolist(), texts[row]
    assert eos.max() == 76  # the long text is cut as open_clip cuts it: 75 tokens and end of text
