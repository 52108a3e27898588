"""``sample``: the base model with a LoRA loaded as a generator loads it, scaled per image."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import Run
from loraforge_trainer import cli, testing


@pytest.fixture(scope="session")
def lora_file(tmp_path_factory, tiny_model) -> Path:
    return testing.make_random_lora(tiny_model, tmp_path_factory.mktemp("lora") / "model.safetensors", seed=7)


def run_sample(tmp: Path, spec: dict | str, out: Path) -> Run:
    spec_path = tmp / f"sample-{len(list(tmp.glob('sample-*.json')))}.json"
    spec_path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli.main(["sample", "--spec", str(spec_path), "--out", str(out)])
    return Run(rc, buf.getvalue())


def item(**over) -> dict:
    it = {"prompt": "a photo of zxq", "seed": 11, "scale": 1.0, "steps": 2, "width": 64, "height": 64}
    it.update(over)
    return it


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def base_image(tiny_model: Path, it: dict, out: Path) -> np.ndarray:
    """The same entry rendered by the base pipeline with no LoRA loaded at all."""
    import torch

    from loraforge_trainer.sample import SampleItem, _decode
    from loraforge_trainer.validate import load_pipeline

    pipe = load_pipeline(str(tiny_model), torch.device("cpu"), torch.float32)
    s = SampleItem(prompt=it["prompt"], negative_prompt=None, seed=it["seed"], scale=0.0, steps=it["steps"],
                   width=it["width"], height=it["height"], guidance_scale=7.0)
    with torch.inference_mode():
        lat = pipe(prompt=[s.prompt], num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                   height=s.height, width=s.width, generator=[torch.Generator().manual_seed(s.seed)],
                   output_type="latent").images
        im = _decode(pipe, lat)[0]
    im.save(out)
    return pixels(out)


def test_scale_zero_is_the_base_model_scale_one_differs_same_seed_same_image(tmp_path, tiny_model, lora_file):
    spec = {"base_model": str(tiny_model), "lora": str(lora_file),
            "images": [item(scale=0.0), item(scale=1.0), item(scale=1.0), item(scale=1.0, seed=12, width=80, height=48,
                                                                              negative_prompt="blurry")]}
    out = tmp_path / "out"
    run = run_sample(tmp_path, spec, out)
    assert run.rc == 0, run.stdout
    assert [e["stage"] for e in run.of("stage")] == ["loading_model", "sampling", "done"]
    assert [(e["step"], e["total"]) for e in run.of("progress")] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    outputs = run.of("output")
    assert [o["index"] for o in outputs] == [0, 1, 2, 3]
    assert all(o["kind"] == "sample_image" for o in outputs)
    done = run.last
    assert done["event"] == "done" and done["images"] == [o["path"] for o in outputs]
    assert [Path(p).name for p in done["images"]] == ["0.png", "1.png", "2.png", "3.png"]

    at0, at1, again, other = (pixels(p) for p in done["images"])
    assert at0.shape == (64, 64, 3) and other.shape == (48, 80, 3)
    base = base_image(tiny_model, item(), tmp_path / "base.png")
    assert np.array_equal(at0, base), "scale 0 must render exactly what the base model renders"
    assert np.abs(at1 - base).mean() > 1.0, "scale 1 must change the image"
    assert np.array_equal(at1, again), "same entry, same seed: same image"


def test_a_second_run_renders_the_same_bytes(tmp_path, tiny_model, lora_file):
    spec = {"base_model": str(tiny_model), "lora": str(lora_file), "images": [item(scale=0.7, seed=99)]}
    a = run_sample(tmp_path, spec, tmp_path / "a")
    b = run_sample(tmp_path, spec, tmp_path / "b")
    assert a.rc == 0 and b.rc == 0
    assert (tmp_path / "a" / "0.png").read_bytes() == (tmp_path / "b" / "0.png").read_bytes()


@pytest.mark.parametrize("bad,field", [
    ({"images": []}, "images"),
    ({"images": [item(width=63)]}, "images[0].width"),
    ({"images": [item(scale=-0.1)]}, "images[0].scale"),
    ({"images": [item(steps=0)]}, "images[0].steps"),
    ({"images": [item(prompt=" ")]}, "images[0].prompt"),
    ({"lora": ""}, "lora"),
])
def test_a_bad_spec_names_its_field_before_any_model_loads(tmp_path, tiny_model, lora_file, bad, field):
    spec = {"base_model": str(tiny_model), "lora": str(lora_file), "images": [item()], **bad}
    run = run_sample(tmp_path, spec, tmp_path / "out")
    assert run.rc == 2
    assert run.last["event"] == "error" and run.last["code"] == "bad_spec" and run.last["field"] == field
    assert [e for e in run.events if e["event"] == "stage"] == []


def test_a_missing_or_broken_lora_is_bad_lora(tmp_path, tiny_model):
    missing = run_sample(tmp_path, {"base_model": str(tiny_model), "lora": str(tmp_path / "nope.safetensors"),
                                    "images": [item()]}, tmp_path / "o1")
    assert (missing.rc, missing.last["code"]) == (2, "bad_lora")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    run = run_sample(tmp_path, {"base_model": str(tiny_model), "lora": str(broken), "images": [item()]}, tmp_path / "o2")
    assert (run.rc, run.last["code"]) == (2, "bad_lora")
    assert not (tmp_path / "o2" / "0.png").exists()


def test_debug_fail_reports_sample_failed_and_writes_nothing(tmp_path, tiny_model, lora_file):
    spec = {"base_model": str(tiny_model), "lora": str(lora_file), "images": [item()], "debug_fail": True}
    run = run_sample(tmp_path, spec, tmp_path / "out")
    assert run.rc == 1
    assert run.last["event"] == "error" and run.last["code"] == "sample_failed"
    assert list((tmp_path / "out").glob("*.png")) == []
