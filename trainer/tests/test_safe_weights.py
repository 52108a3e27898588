"""Base model weights are read from safetensors only: a pickled ``.bin`` can run code when it is
loaded, so a model folder (or Hub repo) that has only ``.bin`` weights is refused, not loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from conftest import make_spec, run_trainer
from safetensors.torch import load_file

# diffusers and transformers names of the pickled twin of each safetensors file.
_BIN_NAMES = {
    "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
    "model.safetensors": "pytorch_model.bin",
}


def _bin_only_copy(model: Path, dest: Path) -> Path:
    """The tiny model with every safetensors file replaced by the same weights as a pickle."""
    shutil.copytree(model, dest)
    converted = 0
    for st in list(dest.rglob("*.safetensors")):
        torch.save(load_file(st), st.with_name(_BIN_NAMES[st.name]))
        st.unlink()
        converted += 1
    assert converted >= 4, "vae, unet and both text encoders"
    return dest


def test_bin_only_weights_are_refused(tmp_path, tiny_model, images):
    model = _bin_only_copy(tiny_model, tmp_path / "bin-only")
    spec = make_spec(model, steps=2, validation={"enabled": False})
    run = run_trainer(tmp_path, spec, images, tmp_path / "out")
    assert run.rc == 2, run.stdout
    err = run.last
    assert err["event"] == "error" and err["code"] == "bad_model", err
    assert ".safetensors files only" in err["reason"], err["reason"]
    assert not run.of("progress"), "nothing was trained from pickled weights"
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_the_same_weights_as_safetensors_train(tmp_path, tiny_model, images):
    """The control: the folder the .bin copy was made from trains, so the refusal above is
    about the file format and nothing else."""
    spec = make_spec(tiny_model, steps=2, validation={"enabled": False})
    run = run_trainer(tmp_path, spec, images, tmp_path / "out")
    assert run.rc == 0, run.stdout
    assert [p["step"] for p in run.of("progress")] == [1, 2]
