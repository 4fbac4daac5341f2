"""open_clip architectures that transformers' ``CLIPModel`` can express, with their tokenizer and preprocessing.

An architecture is named as open_clip names it (``ViT-B-32``, ``ViT-L-14-336``; a ``-quickgelu`` suffix
selects QuickGELU, as open_clip's ``force_quick_gelu`` does) or given as the path of an open_clip model-config
JSON file (the schema of open_clip's ``model_configs/*.json``: ``embed_dim``, ``quick_gelu``, ``vision_cfg``,
``text_cfg``). A plain ViT image tower and open_clip's causal text transformer map one to one onto
``CLIPModel``; anything else (ResNet or timm image towers, average or attentional pooling, layer scale, a
Hugging Face text tower, SigLIP's logit bias, CoCa) is refused with the name of the setting.

Every architecture uses CLIP's byte-level BPE (49,408 tokens; :mod:`rsclip.model.clip_bpe` finds it) and
open_clip's eval preprocessing: bicubic shortest-side resize, centre crop, OpenAI's mean and std.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rsclip.model.clip_bpe import EOT_ID, SOT_ID, VOCAB_SIZE
from rsclip.errors import InvalidInput, LimitExceeded

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
QUICKGELU_SUFFIX = "-quickgelu"
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which open_clip uses
MAX_CONFIG_BYTES = 64 * 1024

# open_clip's model configs (open-clip-torch 3.3.0, model_configs/*.json) for the plain-ViT CLIPs:
# (embed_dim, vision_cfg, text_cfg); settings left out take open_clip's defaults (head_width 64, mlp_ratio 4,
# context 77, vocabulary 49,408). tests/model/convert/test_openclip_arch.py checks them against the wheel's files.
_B_TEXT = {"width": 512, "heads": 8, "layers": 12}
_L_TEXT = {"width": 768, "heads": 12, "layers": 12}
_H_TEXT = {"width": 1024, "heads": 16, "layers": 24}
_VIT_L = {"layers": 24, "width": 1024, "patch_size": 14}
_VIT_H = {"layers": 32, "width": 1280, "head_width": 80, "patch_size": 14}
KNOWN_CONFIGS: dict[str, tuple[int, dict, dict]] = {
    "ViT-B-32": (512, {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}, _B_TEXT),
    "ViT-B-32-256": (512, {"image_size": 256, "layers": 12, "width": 768, "patch_size": 32}, _B_TEXT),
    "ViT-B-16": (512, {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16}, _B_TEXT),
    "ViT-B-16-plus-240": (640, {"image_size": 240, "layers": 12, "width": 896, "patch_size": 16},
                          {"width": 640, "heads": 10, "layers": 12}),
    "ViT-L-14": (768, {"image_size": 224, **_VIT_L}, _L_TEXT),
    "ViT-L-14-336": (768, {"image_size": 336, **_VIT_L}, _L_TEXT),
    "ViT-H-14": (1024, {"image_size": 224, **_VIT_H}, _H_TEXT),
    "ViT-H-14-378": (1024, {"image_size": 378, **_VIT_H}, _H_TEXT),
    "ViT-g-14": (1024, {"image_size": 224, "layers": 40, "width": 1408, "head_width": 88, "mlp_ratio": 4.3637,
                        "patch_size": 14}, _H_TEXT),
    "ViT-bigG-14": (1280, {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104,
                           "mlp_ratio": 4.9231, "patch_size": 14}, {"width": 1280, "heads": 20, "layers": 32}),
}
RESNET_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")
_RESNET_REFUSAL = ("has a ResNet image tower (open_clip's ModifiedResNet), which transformers' CLIPModel "
                   "cannot express; use a ViT checkpoint of the same model")

# Settings a CLIPModel expresses (taken), settings that only matter in training (ignored), and settings that
# must keep open_clip's default for the tower to be a plain CLIP one (anything else is refused).
_VISION_TAKEN = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16, "head_width": 64,
                 "mlp_ratio": 4.0}
_TEXT_TAKEN = {"context_length": 77, "vocab_size": VOCAB_SIZE, "width": 512, "heads": 8, "layers": 12,
               "mlp_ratio": 4.0}
_TRAINING_ONLY = {"patch_dropout", "output_tokens", "pad_id", "eos_id", "cast_dtype", "init_logit_scale"}
_CUSTOM_BLOCK = {"ls_init_value": None, "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                 "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                 "scale_attn": False, "scale_fc": False}
_VISION_DEFAULT = {**_CUSTOM_BLOCK, "attentional_pool": False, "no_ln_pre": False, "final_ln_after_pool": False,
                   "pool_type": "tok", "timm_model_name": None}
_TEXT_DEFAULT = {**_CUSTOM_BLOCK, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
                 "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "hf_model_name": None,
                 "hf_tokenizer_name": None, "tokenizer_kwargs": None, "tokenizer_mode": None}
_TOP_DEFAULT = {"custom_text": False, "init_logit_bias": None, "multimodal_cfg": None}
# a learnable or a fixed sin-cos table: either way the state dict holds it
_POS_EMBED_TYPES = ("learnable", "sin_cos_2d")


@dataclass(frozen=True)
class ClipArchitecture:
    """The hyper-parameters of an open_clip ViT CLIP (sizes as open_clip derives them)."""

    name: str
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    text_width: int
    text_heads: int
    text_layers: int
    text_mlp: int
    context_length: int
    quick_gelu: bool
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    @property
    def activation(self) -> str:
        """The transformers name of the MLP activation (QuickGELU for OpenAI-pretrained weights)."""
        return "quick_gelu" if self.quick_gelu else "gelu"

    def hf_config(self) -> dict:
        """Keyword arguments of ``transformers.CLIPConfig`` for this architecture."""
        common = {"hidden_act": self.activation, "layer_norm_eps": LAYER_NORM_EPS, "projection_dim": self.embed_dim}
        text = dict(hidden_size=self.text_width, intermediate_size=self.text_mlp, num_hidden_layers=self.text_layers,
                    num_attention_heads=self.text_heads, max_position_embeddings=self.context_length,
                    vocab_size=VOCAB_SIZE, bos_token_id=SOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID, **common)
        vision = dict(hidden_size=self.vision_width, intermediate_size=self.vision_mlp,
                      num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
                      image_size=self.image_size, patch_size=self.patch_size, **common)
        return dict(text_config=text, vision_config=vision, projection_dim=self.embed_dim,
                    architectures=["CLIPModel"])

    def to_dict(self) -> dict:
        """JSON-safe form (the conversion record keeps it)."""
        return asdict(self)


def _checked(section: str, cfg: dict, taken: dict, must: dict) -> dict:
    """``cfg``'s expressible settings over ``taken``'s defaults; raises for settings CLIPModel cannot express."""
    out = dict(taken)
    for key, value in cfg.items():
        if key in taken:
            out[key] = value
        elif key == "pos_embed_type" and value in _POS_EMBED_TYPES or key in _TRAINING_ONLY:
            continue
        elif key not in must:
            raise InvalidInput(f"{section}.{key} is not an open_clip setting rsclip knows")
        elif value != must[key]:
            raise InvalidInput(f"{section}.{key}={value!r:.80} cannot be expressed by transformers' CLIPModel")
    return out


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what} must be a positive integer, got {value!r}")
    return value


def _square(value, what: str) -> int:
    """An image or patch size: an int, or a square pair (CLIPModel has square inputs only)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise InvalidInput(f"{what}={value!r}: only square sizes can be expressed by CLIPModel")
        value = value[0]
    return _positive_int(value, what)


def _vision(cfg: dict, embed: int) -> dict:
    if isinstance(cfg.get("layers"), (list, tuple)):
        raise InvalidInput(f"the architecture {_RESNET_REFUSAL}")
    v = _checked("vision_cfg", cfg, _VISION_TAKEN, _VISION_DEFAULT)
    width, head_width = _positive_int(v["width"], "vision_cfg.width"), _positive_int(v["head_width"], "head_width")
    size, patch = _square(v["image_size"], "vision_cfg.image_size"), _square(v["patch_size"], "patch_size")
    if width % head_width or size % patch:
        raise InvalidInput(f"vision_cfg: width {width} / head_width {head_width} or image_size {size} / "
                           f"patch_size {patch} is not whole")
    return dict(image_size=size, patch_size=patch, vision_width=width, vision_heads=width // head_width,
                vision_layers=_positive_int(v["layers"], "vision_cfg.layers"),
                vision_mlp=int(width * float(v["mlp_ratio"])), embed_dim=embed)


def _text(cfg: dict) -> dict:
    t = _checked("text_cfg", cfg, _TEXT_TAKEN, _TEXT_DEFAULT)
    width, heads = _positive_int(t["width"], "text_cfg.width"), _positive_int(t["heads"], "text_cfg.heads")
    if width % heads:
        raise InvalidInput(f"text_cfg: width {width} is not a multiple of heads {heads}")
    if t["vocab_size"] != VOCAB_SIZE:
        raise InvalidInput(f"text_cfg.vocab_size={t['vocab_size']!r}: only CLIP's BPE vocabulary ({VOCAB_SIZE} "
                           "tokens) is supported")
    return dict(text_width=width, text_heads=heads, text_layers=_positive_int(t["layers"], "text_cfg.layers"),
                text_mlp=int(width * float(t["mlp_ratio"])),
                context_length=_positive_int(t["context_length"], "text_cfg.context_length"))


def _preprocess(cfg: dict) -> dict:
    """Mean and std of an open_clip ``preprocess_cfg``; other preprocessing cannot be expressed."""
    allowed = {"interpolation": "bicubic", "resize_mode": "shortest"}
    out = {}
    for key, value in cfg.items():
        if key in ("mean", "std"):
            if not (isinstance(value, (list, tuple)) and len(value) == 3):
                raise InvalidInput(f"preprocess_cfg.{key} must be 3 numbers, got {value!r}")
            out[key] = tuple(float(v) for v in value)
        elif allowed.get(key, object()) != value:
            raise InvalidInput(f"preprocess_cfg.{key}={value!r} cannot be expressed by CLIP's image processor")
    return out


def parse_config(cfg: dict, name: str) -> ClipArchitecture:
    """A :class:`ClipArchitecture` from an open_clip model-config dict; raises ``InvalidInput`` naming the
    setting that a ``CLIPModel`` cannot express."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict) \
            or not isinstance(cfg.get("text_cfg"), dict):
        raise InvalidInput(f"architecture {name}: an open_clip model config needs vision_cfg and text_cfg objects")
    try:
        for key, value in cfg.items():
            if key in ("embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "preprocess_cfg") \
                    or key in _TRAINING_ONLY:
                continue
            if key not in _TOP_DEFAULT or value not in (_TOP_DEFAULT[key], None):
                raise InvalidInput(f"{key}={value!r:.80} cannot be expressed by transformers' CLIPModel")
        fields = {**_vision(cfg["vision_cfg"], _positive_int(cfg.get("embed_dim"), "embed_dim")),
                  **_text(cfg["text_cfg"]), **_preprocess(cfg.get("preprocess_cfg") or {})}
    except InvalidInput as exc:
        raise InvalidInput(f"architecture {name}: {exc}") from None
    return ClipArchitecture(name=name, quick_gelu=bool(cfg.get("quick_gelu", False)), **fields)


def architecture_names() -> list[str]:
    """The architecture names rsclip knows (each also with ``-quickgelu``)."""
    return sorted(KNOWN_CONFIGS)


def _read_config_file(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise LimitExceeded(f"architecture file {path} is {size} bytes, more than {MAX_CONFIG_BYTES}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"architecture file {path} is not JSON: {exc}") from None


def resolve_architecture(arch: str | os.PathLike) -> ClipArchitecture:
    """The :class:`ClipArchitecture` of an open_clip name (``ViT-B-32``, ``ViT-L-14-336-quickgelu``) or of a
    model-config JSON file. Raises ``InvalidInput`` for unknown names, ResNet towers and settings that
    transformers' ``CLIPModel`` cannot express."""
    text = str(arch)
    if text.endswith(".json"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InvalidInput(f"architecture file {text} not found")
        return parse_config(_read_config_file(path), text)
    base = text[: -len(QUICKGELU_SUFFIX)] if text.endswith(QUICKGELU_SUFFIX) else text
    if base in RESNET_NAMES:
        raise InvalidInput(f"architecture {text} {_RESNET_REFUSAL}")
    if base not in KNOWN_CONFIGS:
        raise InvalidInput(f"unknown architecture {text!r}: known are {', '.join(architecture_names())} (each also "
                           f"with {QUICKGELU_SUFFIX}), or give an open_clip model-config .json file")
    embed, vision, tower = KNOWN_CONFIGS[base]
    cfg = {"embed_dim": embed, "quick_gelu": text != base, "vision_cfg": vision, "text_cfg": tower}
    return parse_config(cfg, text)


def build_image_processor(arch: ClipArchitecture):
    """A Hugging Face CLIP image processor doing open_clip's eval preprocessing for ``arch``."""
    from transformers import CLIPImageProcessorPil

    size = arch.image_size
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=list(arch.mean), image_std=list(arch.std))
