"""open_clip / OpenAI CLIP state dicts, checked against an architecture and renamed for transformers' CLIPModel.

open_clip's ViT CLIP (the layout of OpenAI's ``model.py``) and ``CLIPModel`` hold the same tensors under other
names, with two differences in form: attention keeps q, k and v in one ``in_proj`` matrix (split here in that
order), and the two projections are stored input-major (``x @ proj``; transposed here into ``nn.Linear``
weights). :func:`check_state_dict` compares names and shapes with the architecture first, so a wrong
architecture, a truncated export or a foreign checkpoint is a clear error naming the key.
"""

from __future__ import annotations

import torch

from rsclip.model.checkpoints import check_keys
from rsclip.model.convert.openclip_arch import KNOWN_CONFIGS, VOCAB_SIZE, ClipArchitecture, resolve_architecture
from rsclip.errors import InvalidInput

# Entries that are not weights: OpenAI's TorchScript archives keep three sizes as tensors, and older exports
# keep the text tower's causal mask; the architecture rebuilds all of them.
IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
VISION_BLOCKS, TEXT_BLOCKS = "visual.transformer.resblocks.", "transformer.resblocks."
_TOWER_BLOCKS = {VISION_BLOCKS: "vision_model.encoder.layers.", TEXT_BLOCKS: "text_model.encoder.layers."}
_BLOCK_PARTS = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2.",
                "attn.out_proj.": "self_attn.out_proj."}
_RENAMED = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' name
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_RESNET_MARKERS = ("visual.attnpool.", "visual.layer1.")


def _block_shapes(prefix: str, layers: int, width: int, mlp: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        p = f"{prefix}{i}."
        for norm in ("ln_1", "ln_2"):
            shapes.update({f"{p}{norm}.weight": (width,), f"{p}{norm}.bias": (width,)})
        shapes.update({
            f"{p}attn.in_proj_weight": (3 * width, width), f"{p}attn.in_proj_bias": (3 * width,),
            f"{p}attn.out_proj.weight": (width, width), f"{p}attn.out_proj.bias": (width,),
            f"{p}mlp.c_fc.weight": (mlp, width), f"{p}mlp.c_fc.bias": (mlp,),
            f"{p}mlp.c_proj.weight": (width, mlp), f"{p}mlp.c_proj.bias": (width,),
        })
    return shapes


def expected_shapes(arch: ClipArchitecture) -> dict[str, tuple[int, ...]]:
    """The open_clip state-dict keys of ``arch`` and their shapes."""
    vw, tw, grid = arch.vision_width, arch.text_width, arch.image_size // arch.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "logit_scale": (),
        "visual.class_embedding": (vw,), "visual.positional_embedding": (grid * grid + 1, vw),
        "visual.conv1.weight": (vw, 3, arch.patch_size, arch.patch_size),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,), "visual.proj": (vw, arch.embed_dim),
        "token_embedding.weight": (VOCAB_SIZE, tw), "positional_embedding": (arch.context_length, tw),
        "ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, arch.embed_dim),
    }
    shapes.update(_block_shapes(VISION_BLOCKS, arch.vision_layers, vw, arch.vision_mlp))
    shapes.update(_block_shapes(TEXT_BLOCKS, arch.text_layers, tw, arch.text_mlp))
    return shapes


def _sizes(shapes: dict) -> tuple | None:
    """What identifies an architecture in a state dict's shapes (None when the keys are not there)."""
    try:
        vw, _, patch, _ = shapes["visual.conv1.weight"]
        grid = round((shapes["visual.positional_embedding"][0] - 1) ** 0.5)
        layers = sum(k.startswith(VISION_BLOCKS) and k.endswith(".attn.in_proj_weight") for k in shapes)
        text_layers = sum(k.startswith(TEXT_BLOCKS) and k.endswith(".attn.in_proj_weight") for k in shapes)
        return (vw, patch, grid * patch, layers, shapes["ln_final.weight"][0], text_layers,
                shapes["text_projection"][1], shapes.get("visual.transformer.resblocks.0.mlp.c_fc.weight"))
    except (KeyError, ValueError, TypeError, IndexError):
        return None


def guess_architecture(state: dict[str, torch.Tensor]) -> str | None:
    """The known architecture whose shapes the state dict has (activation aside), or None."""
    found = _sizes({k: tuple(v.shape) for k, v in state.items()})
    for name in KNOWN_CONFIGS:
        if found is not None and found == _sizes(expected_shapes(resolve_architecture(name))):
            return name
    return None


def _hint(state: dict, arch: ClipArchitecture) -> str:
    guess = guess_architecture(state)
    if guess and guess != arch.name.removesuffix("-quickgelu"):
        return f" (wrong architecture? its shapes are those of {guess})"
    return ""


def normalise_keys(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``state`` without the non-weight entries, with open_clip's ``CustomTextCLIP`` text keys (``text.``)
    moved to the top level as in ``CLIP``. Raises ``InvalidInput`` for a ResNet image tower."""
    for key in state:
        if key.startswith(_RESNET_MARKERS):
            raise InvalidInput(f"{name}: key {key!r} belongs to a ResNet image tower, which transformers' "
                               "CLIPModel cannot express")
    kept = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in IGNORED_KEYS}
    if "positional_embedding" not in kept and "text.positional_embedding" in kept:
        kept = {k.removeprefix("text."): v for k, v in kept.items()}
    return kept


def check_state_dict(state: dict[str, torch.Tensor], arch: ClipArchitecture, name: str) -> None:
    """Raise ``InvalidInput`` naming ``name`` and the first offending key when ``state`` (normalised) is not
    exactly ``arch``'s open_clip state dict: a missing or unexpected key, or a shape that differs."""
    check_keys(state, expected_shapes(arch), name, f"architecture {arch.name}", _hint(state, arch))


def owned_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float32 in its own contiguous memory: safetensors refuses views that share storage, and
    the source may be a memory-mapped file or half precision (OpenAI's archives)."""
    return tensor.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)


def _block_entries(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    for src, dst in _TOWER_BLOCKS.items():
        if not key.startswith(src):
            continue
        index, part = key[len(src):].split(".", 1)
        base = f"{dst}{index}."
        if part.startswith("attn.in_proj_"):
            kind = "weight" if part.endswith("weight") else "bias"
            q, k, v = tensor.chunk(3, dim=0)
            return {f"{base}self_attn.{n}_proj.{kind}": owned_float32(t) for n, t in (("q", q), ("k", k), ("v", v))}
        for old, new in _BLOCK_PARTS.items():
            if part.startswith(old):
                return {base + new + part[len(old):]: owned_float32(tensor)}
    return None


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``CLIPModel`` state dict holding the weights of a checked open_clip ``state`` (float32)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in _RENAMED:
            out[_RENAMED[key]] = owned_float32(tensor.reshape(()) if key == "logit_scale" else tensor)
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = owned_float32(tensor.t())
        else:
            entries = _block_entries(key, tensor)
            if entries is None:  # check_state_dict admits only keys mapped above
                raise AssertionError(f"no transformers name for {key}")
            out.update(entries)
    return out
