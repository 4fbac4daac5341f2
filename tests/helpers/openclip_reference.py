"""An independent reference for open_clip / OpenAI CLIP checkpoints, for the conversion tests.

``open-clip-torch`` cannot be imported beside rsclip's CPU torch (PyPI's torchvision is a CUDA build:
"operator torchvision::nms does not exist"), so this is the published architecture written out again, working
directly on open_clip state-dict keys: a pre-LN ViT with class token, learned positions, ``ln_pre``/``ln_post``
and ``proj``; a causal text transformer pooled at the end-of-text token (the highest id, ``argmax``) and
projected by ``text_projection``; QuickGELU or GELU. Nothing here uses rsclip's conversion code, so a
renaming, splitting or transposing mistake there shows up as a different embedding. The tokenizer is CLIP's
``SimpleTokenizer`` (byte-level BPE over the open_clip wheel's vocabulary file) written from its behaviour,
without ftfy (not installed; the captions compared are plain ASCII, on which ftfy changes nothing).

The open_clip wheel (configs, vocabulary) is fetched once with ``pip download`` into a cache folder.
"""

from __future__ import annotations

import copy
import gzip
import html
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import regex
import torch
import torch.nn.functional as F
from PIL import Image

OPEN_CLIP_WHEEL = "open_clip_torch-3.3.0-py3-none-any.whl"
WHEEL_CACHE = Path(os.environ.get("RSCLIP_TEST_CACHE", Path.home() / ".cache" / "rsclip-tests"))
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


# --- the open_clip wheel ---------------------------------------------------------------------------------

def open_clip_wheel() -> zipfile.ZipFile:
    """The open-clip-torch 3.3.0 wheel (downloaded once with pip, without dependencies)."""
    path = WHEEL_CACHE / OPEN_CLIP_WHEEL
    if not path.is_file():
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "open-clip-torch==3.3.0", "-d", str(WHEEL_CACHE)], capture_output=True, text=True,
                               timeout=600)
        if done.returncode != 0 or not path.is_file():
            raise RuntimeError(f"cannot download the open_clip wheel: {done.stderr[-2000:]}")
    return zipfile.ZipFile(path)


def wheel_config(name: str) -> dict:
    """open_clip's model config ``name`` (``model_configs/<name>.json``) from the wheel."""
    with open_clip_wheel() as wheel:
        return json.loads(wheel.read(f"open_clip/model_configs/{name}.json"))


def wheel_config_names() -> list[str]:
    with open_clip_wheel() as wheel:
        return sorted(Path(n).stem for n in wheel.namelist() if n.startswith("open_clip/model_configs/"))


def wheel_bpe() -> bytes:
    with open_clip_wheel() as wheel:
        return wheel.read("open_clip/bpe_simple_vocab_16e6.txt.gz")


# --- architecture numbers, as open_clip derives them --------------------------------------------------------

def sizes(cfg: dict) -> dict:
    """The sizes open_clip builds from a model config (its dataclass defaults filled in)."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    vw, tw = v.get("width", 768), t.get("width", 512)
    return dict(embed=cfg["embed_dim"], image=v.get("image_size", 224), patch=v.get("patch_size", 16),
                vw=vw, vl=v.get("layers", 12), vh=vw // v.get("head_width", 64),
                vmlp=int(vw * v.get("mlp_ratio", 4.0)), tw=tw, tl=t.get("layers", 12), th=t.get("heads", 8),
                tmlp=int(tw * t.get("mlp_ratio", 4.0)), ctx=t.get("context_length", 77),
                vocab=t.get("vocab_size", 49408), quick_gelu=bool(cfg.get("quick_gelu", False)))


def tiny_config(name: str) -> dict:
    """open_clip's config ``name`` shrunk to 2 layers and small widths, keeping what defines the family:
    image and patch size, MLP ratio, activation, context and vocabulary."""
    cfg = copy.deepcopy(wheel_config(name.removesuffix("-quickgelu") if name.endswith("-quickgelu")
                                     and name not in wheel_config_names() else name))
    if name.endswith("-quickgelu"):
        cfg["quick_gelu"] = True
    cfg["embed_dim"] = 24
    cfg["vision_cfg"].update(layers=2, width=64, head_width=32)
    cfg["text_cfg"].update(layers=2, width=32, heads=2)
    return cfg


# --- a random open_clip state dict ----------------------------------------------------------------------

def _block(sd: dict, prefix: str, layers: int, width: int, mlp: int, g: torch.Generator) -> None:
    def rnd(*shape, std):
        return torch.randn(*shape, generator=g) * std

    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"] = 1 + rnd(width, std=0.1)
            sd[p + ln + ".bias"] = rnd(width, std=0.1)
        sd[p + "attn.in_proj_weight"] = rnd(3 * width, width, std=width ** -0.5)
        sd[p + "attn.in_proj_bias"] = rnd(3 * width, std=0.1)
        sd[p + "attn.out_proj.weight"] = rnd(width, width, std=width ** -0.5)
        sd[p + "attn.out_proj.bias"] = rnd(width, std=0.1)
        sd[p + "mlp.c_fc.weight"] = rnd(mlp, width, std=3 * width ** -0.5)  # wide pre-activations, where
        # GELU and QuickGELU differ most
        sd[p + "mlp.c_fc.bias"] = rnd(mlp, std=0.1)
        sd[p + "mlp.c_proj.weight"] = rnd(width, mlp, std=2 * mlp ** -0.5)
        sd[p + "mlp.c_proj.bias"] = rnd(width, std=0.1)


def random_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised open_clip ``CLIP`` state dict for the config (no non-trivial value left at
    0 or 1, so that any mix-up of tensors changes the outputs)."""
    s, g = sizes(cfg), torch.Generator().manual_seed(seed)
    grid = s["image"] // s["patch"]
    sd = {
        "visual.class_embedding": torch.randn(s["vw"], generator=g) * 0.5,
        "visual.positional_embedding": torch.randn(grid * grid + 1, s["vw"], generator=g) * 0.2,
        "visual.conv1.weight": torch.randn(s["vw"], 3, s["patch"], s["patch"], generator=g) / (s["patch"] * 3),
        "visual.proj": torch.randn(s["vw"], s["embed"], generator=g) * s["vw"] ** -0.5,
        "token_embedding.weight": torch.randn(s["vocab"], s["tw"], generator=g) * 0.5,
        "positional_embedding": torch.randn(s["ctx"], s["tw"], generator=g) * 0.2,
        "text_projection": torch.randn(s["tw"], s["embed"], generator=g) * s["tw"] ** -0.5,
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for ln, width in (("visual.ln_pre", s["vw"]), ("visual.ln_post", s["vw"]), ("ln_final", s["tw"])):
        sd[ln + ".weight"] = 1 + torch.randn(width, generator=g) * 0.1
        sd[ln + ".bias"] = torch.randn(width, generator=g) * 0.1
    _block(sd, "visual.transformer", s["vl"], s["vw"], s["vmlp"], g)
    _block(sd, "transformer", s["tl"], s["tw"], s["tmlp"], g)
    return sd


# --- the forward pass ------------------------------------------------------------------------------------

def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)


def _attention(x, sd, p, heads, mask):
    b, n, w = x.shape  # (batch, tokens, width)
    q, k, v = (x @ sd[p + "in_proj_weight"].T + sd[p + "in_proj_bias"]).split(w, dim=-1)
    q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))  # (b, heads, n, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, w)
    return out @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def _act(x, quick_gelu: bool):
    return x * torch.sigmoid(1.702 * x) if quick_gelu else F.gelu(x)


def _transformer(x, sd, prefix, layers, heads, quick_gelu, mask=None):
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        x = x + _attention(_ln(x, sd, p + "ln_1"), sd, p + "attn.", heads, mask)
        h = _ln(x, sd, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        x = x + _act(h, quick_gelu) @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return x


@torch.no_grad()
def encode_image(sd: dict, cfg: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Image features ``(B, embed)`` of normalised pixels ``(B, 3, H, W)``."""
    s = sizes(cfg)
    sd = {k: v.float() for k, v in sd.items()}
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=s["patch"])  # (B, width, grid, grid)
    x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, width)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _transformer(_ln(x, sd, "visual.ln_pre"), sd, "visual.transformer", s["vl"], s["vh"], s["quick_gelu"])
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


@torch.no_grad()
def encode_text(sd: dict, cfg: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Text features ``(B, embed)`` of token ids ``(B, context)`` (zero padded, as open_clip pads)."""
    s = sizes(cfg)
    sd = {k: v.float() for k, v in sd.items()}
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    causal = torch.full((s["ctx"], s["ctx"]), float("-inf")).triu(1)
    x = _ln(_transformer(x, sd, "transformer", s["tl"], s["th"], s["quick_gelu"], causal), sd, "ln_final")
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ sd["text_projection"]


def preprocess(path: Path, size: int) -> torch.Tensor:
    """open_clip's eval transform: bicubic shortest-side resize, centre crop, to [0, 1], OpenAI mean/std."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    im = im.resize((size, int(size * h / w)) if w <= h else (int(size * w / h), size), Image.BICUBIC)
    w, h = im.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - MEAN) / STD


# --- the tokenizer ----------------------------------------------------------------------------------------

def _byte_alphabet() -> dict[int, str]:
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # printable Latin-1 stays itself
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


class ReferenceTokenizer:
    """CLIP's SimpleTokenizer: clean (HTML unescape, collapse whitespace, lower case), split with CLIP's
    pattern, byte-encode, merge pairs by BPE rank, wrap in start/end of text, pad with zeros to 77."""

    def __init__(self, bpe_gz: bytes, context_length: int = 77):
        merges = [tuple(m.split()) for m in gzip.decompress(bpe_gz).decode("utf-8").split("\n")[1:49152 - 256 - 1]]
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.alphabet = _byte_alphabet()
        chars = list(self.alphabet.values())
        tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
        tokens += ["<start_of_text>", "<end_of_text>"]
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.sot, self.eot = self.ids["<start_of_text>"], self.ids["<end_of_text>"]
        self.context_length = context_length
        self.pattern = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
                                     r"""|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

    def _merge(self, word: str) -> list[str]:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, _ = min(ranked)
            if best == math.inf:
                break
            pair = next((parts[i], parts[i + 1]) for r, i in ranked if r == best)
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text: str) -> list[int]:
        text = " ".join(html.unescape(html.unescape(text)).strip().split()).lower()
        out = []
        for piece in self.pattern.findall(text):
            word = "".join(self.alphabet[b] for b in piece.encode("utf-8"))
            out += [self.ids[t] for t in self._merge(word)]
        return out

    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for r, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot][: self.context_length]
            ids[-1] = self.eot
            rows[r, : len(ids)] = torch.tensor(ids)
        return rows


# --- OpenAI's TorchScript archives ------------------------------------------------------------------------

def _module_tree(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Modules nested as the dotted keys say, holding the tensors as parameters (``visual.conv1.weight``)."""
    root = torch.nn.Module()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, torch.nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    return root


class _OpenAIModel(torch.nn.Module):
    """OpenAI's CLIP as a module: the state dict's tensors under their names, the three size buffers OpenAI's
    archives carry, and a forward pass through the reference above."""

    def __init__(self, sd: dict[str, torch.Tensor], cfg: dict):
        super().__init__()
        self.cfg = cfg
        tree = _module_tree(sd)
        for name, child in tree.named_children():
            self.add_module(name, child)
        for name, param in tree.named_parameters(recurse=False):
            self.register_parameter(name, param)
        s = sizes(cfg)
        for name, value in (("input_resolution", s["image"]), ("context_length", s["ctx"]),
                            ("vocab_size", s["vocab"])):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, pixels, tokens):
        params = dict(self.named_parameters())
        return encode_image(params, self.cfg, pixels), encode_text(params, self.cfg, tokens)


def save_torchscript(sd: dict[str, torch.Tensor], cfg: dict, path: Path) -> None:
    """Trace the model and save it as OpenAI published theirs: a TorchScript archive (``torch.jit.save``)."""
    s = sizes(cfg)
    model = _OpenAIModel(sd, cfg).eval()
    pixels = torch.zeros(1, 3, s["image"], s["image"])
    tokens = torch.zeros(1, s["ctx"], dtype=torch.long)
    tokens[0, :2] = torch.tensor([49406, 49407])
    traced = torch.jit.trace(model, (pixels, tokens), check_trace=False)
    torch.jit.save(traced, str(path))


# --- checkpoint files in each published format ------------------------------------------------------------

FORMATS = ("plain", "training", "safetensors", "legacy", "torchscript", "custom-text")


def write_checkpoint(sd: dict[str, torch.Tensor], cfg: dict, path: Path, fmt: str) -> Path:
    """Save ``sd`` as a checkpoint of the format ``fmt``: ``plain`` (``torch.save`` of the state dict, as
    RemoteCLIP and GeoRSCLIP publish), ``training`` (open_clip's training checkpoint: DDP ``module.`` keys
    and an optimiser state, as SkyCLIP publishes), ``safetensors``, ``legacy`` (pre-1.6 ``torch.save``),
    ``torchscript`` (OpenAI's archive, half precision) or ``custom-text`` (open_clip's ``CustomTextCLIP``
    layout, text keys under ``text.``)."""
    if fmt == "plain":
        torch.save(sd, path)
    elif fmt == "training":
        optimizer = {"state": {i: {"exp_avg": torch.zeros(2)} for i in range(3)}, "param_groups": [{"lr": 1e-5}]}
        torch.save({"epoch": 20, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": optimizer}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif fmt == "torchscript":
        save_torchscript({k: v.half() for k, v in sd.items()}, cfg, path)
    elif fmt == "custom-text":
        torch.save({k if k.startswith("visual.") or k == "logit_scale" else f"text.{k}": v
                    for k, v in sd.items()}, path)
    else:
        raise ValueError(fmt)
    return path


def stored_weights(sd: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """The values a checkpoint of ``fmt`` holds (OpenAI's archives are half precision)."""
    return {k: v.half().float() for k, v in sd.items()} if fmt == "torchscript" else sd
