"""Hostile and broken checkpoints: a pickle that would run code is refused (its payload never runs); truncated
and corrupt files, missing, extra and mis-shaped keys, unsupported architectures are each one clear error
naming the file and the key; the command line reports them as one line with exit status 2."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from rsclip.app.cli import main as cli_main
from rsclip.model import locations
from rsclip.model.clip import load_model
from rsclip.model.convert.converter import convert_model
from rsclip.errors import InvalidInput, LimitExceeded, UnsafeInput
from rsclip.testing import build_tiny_clip
from tests.helpers import openclip_reference as ref


class _Payload:
    """Unpickling this runs a shell command that creates a file: a real attack, made visible."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def tiny(tmp_path):
    """A tiny open_clip ViT-B-32 family: (architecture .json, state dict)."""
    cfg = ref.tiny_config("ViT-B-32")
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(cfg))
    return arch, ref.random_state_dict(cfg)


def _malicious(path, marker, sd):
    torch.save({**sd, "payload": _Payload(marker)}, path)
    return path


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, tiny, monkeypatch, capsys):
    arch, sd = tiny
    # the payload is live: a full unpickle (in another process) runs it
    witness = tmp_path / "witness-ran"
    _malicious(tmp_path / "twin.bin", witness, sd)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(tmp_path / 'twin.bin')!r}, "
                    "weights_only=False)"], check=True, capture_output=True)
    assert witness.exists()

    marker = tmp_path / "marker-must-not-exist"
    checkpoint = _malicious(tmp_path / "RemoteCLIP-ViT-B-32.bin", marker, sd)
    monkeypatch.setattr(locations, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(UnsafeInput, match="RemoteCLIP-ViT-B-32.bin.*posix.system"):
        convert_model(f"open_clip:{arch}:{checkpoint}", tmp_path / "out")
    with pytest.raises(UnsafeInput):
        load_model(f"open_clip:{arch}:{checkpoint}")
    assert cli_main(["convert-model", str(checkpoint), str(tmp_path / "out2"), "--arch", str(arch)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rsclip: error:") and "posix.system" in err[0]

    folder = build_tiny_clip(tmp_path / "hf")  # a Hugging Face folder whose pytorch_model.bin is hostile
    (folder / "model.safetensors").unlink()
    _malicious(folder / "pytorch_model.bin", marker, {})
    with pytest.raises(UnsafeInput, match="pytorch_model.bin"):
        convert_model(f"hf-bin:{folder}", tmp_path / "out3")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_torchscript_archive_naming_other_globals_is_refused(tmp_path):
    """An archive shaped like OpenAI's (data.pkl beside constants.pkl) whose pickle calls os.system."""
    marker = tmp_path / "marker-must-not-exist"
    path = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ViT-B-32/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        archive.writestr("ViT-B-32/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("ViT-B-32/version", "3\n")
    with pytest.raises(UnsafeInput, match="ViT-B-32.pt.*system"):
        convert_model(str(path), tmp_path / "out", arch="ViT-B-32")
    assert not marker.exists()


def _saved(tmp_path, name, sd, legacy=False):
    path = tmp_path / name
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_checkpoint(tmp_path, tiny, legacy):
    arch, sd = tiny
    path = _saved(tmp_path, "cut.pt", sd, legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidInput, match="cut.pt.*(truncated|corrupt)"):
        convert_model(f"open_clip:{arch}:{path}", tmp_path / "out")


def test_corrupt_archive_member(tmp_path, tiny):
    arch, sd = tiny
    path = _saved(tmp_path, "flipped.pt", sd)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor's bytes
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match=f"flipped.pt: archive member {info.filename} is corrupt"):
        convert_model(f"open_clip:{arch}:{path}", tmp_path / "out")


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("visual.ln_post.bias"), "key 'visual.ln_post.bias' is missing"),
    (lambda sd: sd.update(logit_bias=torch.zeros(1)), "unexpected key 'logit_bias'"),
    (lambda sd: sd.update({"visual.proj": torch.zeros(64, 30)}), r"key 'visual.proj' has shape \[64, 30\]"),
    (lambda sd: sd.update({"visual.attnpool.c_proj.weight": torch.zeros(2)}), "'visual.attnpool.c_proj.weight' "
     "belongs to a ResNet"),
    (lambda sd: sd.update({"ln_final.weight": torch.zeros(32, dtype=torch.long)}), "'ln_final.weight' holds "
     "torch.int64"),
])
def test_keys_that_do_not_fit_the_architecture(tmp_path, tiny, change, message):
    arch, sd = tiny
    change(sd)
    path = _saved(tmp_path, "bad.pt", sd)
    with pytest.raises(InvalidInput, match=f"bad.pt: .*{message}"):
        convert_model(f"open_clip:{arch}:{path}", tmp_path / "out")


def test_wrong_architecture_names_the_key_and_the_likely_one(tmp_path):
    sd = ref.random_state_dict(ref.wheel_config("ViT-B-32"), seed=1)
    path = _saved(tmp_path, "b32.pt", sd)
    with pytest.raises(InvalidInput, match=r"b32.pt: key 'visual.positional_embedding' has shape \[50, 768\], "
                                           r"architecture ViT-B-16 expects \[197, 768\].*ViT-B-32"):
        convert_model(str(path), tmp_path / "out", arch="ViT-B-16")
    with pytest.raises(InvalidInput, match="b32.pt: key 'visual.transformer.resblocks.12.attn.in_proj_bias' is "
                                           "missing.*ViT-B-32"):
        convert_model(str(path), tmp_path / "out", arch="ViT-L-14")


@pytest.mark.parametrize("arch, message", [("RN50", "ResNet"), ("ViT-Q-99", "unknown architecture"),
                                           ("missing.json", "not found")])
def test_unsupported_architecture(tmp_path, tiny, arch, message):
    path = _saved(tmp_path, "any.pt", tiny[1])
    with pytest.raises(InvalidInput, match=message):
        convert_model(f"open_clip:{arch}:{path}", tmp_path / "out")


def test_files_that_are_not_checkpoints_and_limits(tmp_path, tiny):
    arch, sd = tiny
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(InvalidInput, match="notes.pt: cannot read"):
        convert_model(f"open_clip:{arch}:{tmp_path / 'notes.pt'}", tmp_path / "out")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(InvalidInput, match="list.pt: holds no state dict"):
        convert_model(f"open_clip:{arch}:{tmp_path / 'list.pt'}", tmp_path / "out")
    path = _saved(tmp_path, "big.pt", sd)
    with pytest.raises(LimitExceeded, match="big.pt"):
        convert_model(f"open_clip:{arch}:{path}", tmp_path / "out", max_bytes=1000)
    with pytest.raises(InvalidInput, match="open_clip:ARCH:URI"):
        convert_model("open_clip:ViT-B-32", tmp_path / "out")
    with pytest.raises(InvalidInput, match="big.pt is a checkpoint file: give its open_clip architecture"):
        convert_model(str(path), tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(InvalidInput, match="already exists"):
        convert_model(f"open_clip:{arch}:{path}", tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"


def test_cli_reports_one_line(tmp_path, tiny, capsys):
    arch, sd = tiny
    sd.pop("ln_final.bias")
    path = _saved(tmp_path, "broken.pt", sd)
    assert cli_main(["convert-model", str(path), str(tmp_path / "out"), "--arch", str(arch)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rsclip: error: {path}: key 'ln_final.bias' is missing (1 of 62 keys of architecture "
                   f"{arch} missing)"]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".rsclip-convert-*"))
