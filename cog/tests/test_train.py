"""cog/train.py end to end: a dataset zip served on loopback, our trainer on the tiny SDXL-shaped
model, the weights tar; and how it fails (trainer errors, bad zips, bad links, signals)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, SIG, TRAIN_PY, TRIGGER, Server, make_spec, make_zip, run_cli

import train as cog_train  # cog/train.py, imported without Cog

EXPECTED_MEMBERS = [
    "train/model.safetensors",
    "train/model.kohya.safetensors",
    "train/validation/0.png",
    "train/validation/1.png",
    "train/validation/2.png",
    "events.jsonl",
    "timing.json",
]


def secret_never_printed(result) -> None:
    assert SIG not in result.stdout and SIG not in result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, dataset):
    """One complete training through the CLI."""
    server = Server()
    try:
        server.routes["/ds.zip"] = make_zip(dataset)
        tmp = tmp_path_factory.mktemp("trained")
        result = run_cli(tmp, server.url("/ds.zip"), make_spec(tiny_model))
    finally:
        server.close()
    assert result.rc == 0, result.stdout + result.stderr
    return result


def test_trains_and_writes_the_weights_tar_in_the_worker_layout(trained, tmp_path):
    secret_never_printed(trained)
    with tarfile.open(trained.output) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == EXPECTED_MEMBERS
        assert all(m.isfile() and m.mode == 0o644 for m in members)
        tar.extractall(tmp_path, filter="data")
    # The trainer's stdout came through line by line, and events.jsonl holds exactly its lines.
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events == trained.json_lines()
    assert [e["stage"] for e in events if e["event"] == "stage"][:1] == ["loading_model"]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]
    done = events[-1]
    assert done["event"] == "done" and done["job_id"] == "job-cog" and done["steps"] == 4
    assert trained.last == done
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert set(timing) == {"trainer_seconds"}
    assert timing["trainer_seconds"] >= done["total_seconds"] > 0


def test_the_trainer_saw_exactly_the_zips_images_and_captions(trained, dataset, tmp_path):
    from safetensors import safe_open

    from loraforge_trainer.dataset import dataset_hash

    pairs = []
    for name in sorted(n for n in dataset if n.endswith(".png")):
        caption = dataset.get(name.replace(".png", ".txt"), b"").decode().strip() or TRIGGER
        pairs.append((dataset[name], caption))
    assert len(pairs) == 4 and pairs[-1][1] == TRIGGER, "one image has no caption"
    with tarfile.open(trained.output) as tar:
        tar.extractall(tmp_path, filter="data")
    for name in ("model.safetensors", "model.kohya.safetensors"):
        with safe_open(tmp_path / "train" / name, framework="pt") as f:
            meta = f.metadata()
            assert meta["loraforge.dataset_hash"] == dataset_hash(pairs)
            assert meta["loraforge.num_images"] == "4"
            assert len(list(f.keys())) > 0


def test_a_trainer_error_is_the_last_line_and_the_exit_status(tmp_path, server, tiny_model, dataset):
    server.routes["/ds.zip"] = make_zip(dataset)
    result = run_cli(tmp_path, server.url("/ds.zip"), make_spec(tiny_model, debug_fail_at_step=2))
    assert result.rc == 3, result.stdout + result.stderr
    assert result.last["event"] == "error" and result.last["code"] == "non_finite_loss"
    assert result.last["exit_code"] == 3
    assert sum(1 for e in result.json_lines() if e["event"] == "error") == 1, "said once"
    assert not result.output.exists()
    secret_never_printed(result)


def test_a_spec_the_trainer_refuses(tmp_path, server, tiny_model, dataset):
    server.routes["/ds.zip"] = make_zip(dataset)
    result = run_cli(tmp_path, server.url("/ds.zip"), make_spec(tiny_model, rank=0))
    assert result.rc == 2
    assert result.last["code"] == "bad_spec" and result.last["field"] == "rank"
    assert not result.output.exists()


def test_sigterm_stops_the_trainer_at_a_checkpoint(tmp_path, server, tiny_model, dataset):
    server.routes["/ds.zip"] = make_zip(dataset)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(make_spec(tiny_model, steps=10_000, checkpoint_every=10_000)))
    output = tmp_path / "weights.tar"
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "--dataset-url", server.url("/ds.zip"), "--spec", str(spec_path),
         "--output", str(output)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if '"event":"progress"' in line.replace(" ", ""):
                proc.send_signal(signal.SIGTERM)
                break
        lines.extend(proc.stdout.readlines())
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line) for line in lines if line.strip()]
    assert rc == 10, lines
    assert any(e["event"] == "stopped" for e in events), "the trainer checkpointed and stopped"
    assert events[-1]["event"] == "error" and events[-1]["code"] == "stopped" and events[-1]["exit_code"] == 10
    assert not output.exists()


BAD_ZIPS = {
    "parent": [("../00.png", b"x")],
    "absolute": [("/00.png", b"x")],
    "folder": [("sub/00.png", b"x")],
    "folder entry": [("00/", b"")],
    "other name": [("cat.png", b"x")],
    "one digit": [("0.png", b"x")],
    "other type": [("00.gif", b"x")],
    "no image": [("00.txt", b"zxq")],
    "caption alone": [("00.png", b"x"), ("01.txt", b"zxq")],
    "two images one stem": [("00.png", b"x"), ("00.jpg", b"y")],
    "duplicate": [("00.png", b"x"), ("00.png", b"y")],
    "huge caption": [("00.png", b"x"), ("00.txt", b"z" * (cog_train.MAX_CAPTION_BYTES + 1))],
}


def _symlink_zip() -> bytes:
    info = zipfile.ZipInfo("00.png")
    info.external_attr = (0o120777 << 16)
    return make_zip([(info, b"/etc/passwd")])


@pytest.mark.parametrize("case", sorted(BAD_ZIPS) + ["symlink", "not a zip", "too large"])
def test_bad_zips_are_refused_before_anything_is_written(case, tmp_path, server):
    env = {}
    if case == "symlink":
        body = _symlink_zip()
    elif case == "not a zip":
        body = b"PK\x03\x04 but not really a zip"
    elif case == "too large":
        body = make_zip({"00.png": b"x" * 5000})
        env[cog_train.MAX_DATASET_BYTES_ENV] = "4096"
    else:
        with pytest.warns(UserWarning) if case == "duplicate" else _nothing():
            body = make_zip(BAD_ZIPS[case])
    server.routes["/ds.zip"] = body
    # The spec is never read by a trainer: these fail before one starts.
    result = run_cli(tmp_path, server.url("/ds.zip"), {"steps": 1}, env=env)
    assert result.rc == 2, (case, result.stdout, result.stderr)
    assert result.last["code"] == "bad_job" and result.last["exit_code"] == 2, result.last
    assert len(result.lines) == 1, "nothing but the error line"
    assert not result.output.exists()
    secret_never_printed(result)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_extraction_writes_only_the_named_files(tmp_path):
    z = tmp_path / "ds.zip"
    z.write_bytes(make_zip({"00.png": b"a", "00.txt": b"zxq one", "01.jpeg": b"b", "02.webp": b"c"}))
    names = cog_train.extract_dataset(z, tmp_path / "images", 1 << 20)
    assert names == ["00.png", "01.jpeg", "02.webp"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["00.png", "00.txt", "01.jpeg", "02.webp"]
    assert (tmp_path / "images" / "00.txt").read_text() == "zxq one"
    # Entries that claim less than they hold are cut off by zipfile's own size check; a zip
    # that holds more than the limit in all is refused while it is written.
    z.write_bytes(make_zip({"00.png": b"a" * 600, "01.png": b"b" * 600}))
    with pytest.raises(cog_train.Failure) as e:
        cog_train.extract_dataset(z, tmp_path / "images2", 1000)
    assert e.value.code == "bad_job"


def test_download_failures(tmp_path, server):
    result = run_cli(tmp_path, server.url("/missing.zip"), {"steps": 1})
    assert result.rc == 13 and result.last["code"] == "image_download_failed", result.stdout
    assert "HTTP 404" in result.last["reason"]
    secret_never_printed(result)
    assert len(server.requests) == 1, "a 404 is not retried"

    server.requests.clear()
    server.routes["/ds.zip"] = make_zip({"00.png": b"x"})
    result = run_cli(tmp_path, server.url("/ds.zip"), "[1, 2]")
    assert result.rc == 2 and result.last["code"] == "bad_job"
    assert server.requests == [], "a spec that is not an object fails before the download"

    result = run_cli(tmp_path, "file:///etc/passwd", {"steps": 1})
    assert result.rc == 2 and result.last["code"] == "bad_job"

    closed = Server()
    url = closed.url("/ds.zip")
    closed.close()
    result = run_cli(tmp_path, url, {"steps": 1})
    assert result.rc == 13 and result.last["code"] == "image_download_failed"
    assert "3 tries" in result.last["reason"]


def test_a_503_is_retried(tmp_path, server):
    server.routes["/ds.zip"] = make_zip({"00.png": b"x"})
    server.fail["/ds.zip"] = [503]
    size = cog_train.download(server.url("/ds.zip"), tmp_path / "got.zip", 1 << 20, 10)
    assert size == len(server.routes["/ds.zip"]) and len(server.requests) == 2


def test_the_spec_must_be_json(tmp_path, server):
    server.routes["/ds.zip"] = make_zip({"00.png": b"x"})
    result = run_cli(tmp_path, server.url("/ds.zip"), "{not json")
    assert result.rc == 2 and result.last["code"] == "bad_job" and "not JSON" in result.last["reason"]


def test_every_code_used_is_in_the_outcome_table_with_its_exit_status():
    source = (REPO / "crates/domain/src/outcome.rs").read_text()
    exits = {name.lower(): int(v) for name, v in re.findall(r"pub const (\w+): i32 = (\d+);", source)}
    table = {code: exits[name.lower()] for code, name in re.findall(r'row\(\s*"(\w+)",\s*exit::(\w+)', source)}
    assert len(table) > 30, "the table was read"
    for code, status in cog_train.OUTCOMES.items():
        assert table.get(code) == status, f"{code}: {status} here, {table.get(code)} in outcome.rs"
    assert exits["ok"] == cog_train.EXIT_OK and exits["stopped"] == cog_train.EXIT_STOPPED


def test_cog_yaml_matches_the_trainer(tmp_path):
    cog_yaml = (REPO / "cog/cog.yaml").read_text()
    assert re.search(r'^train: "train.py:train"$', cog_yaml, re.M)
    assert re.search(r"^\s+gpu: true$", cog_yaml, re.M)
    assert re.search(r'^\s+python_requirements: requirements.txt$', cog_yaml, re.M)
    pyproject = (REPO / "trainer/pyproject.toml").read_text()
    version = re.search(r'^\s+python_version: "([\d.]+)"$', cog_yaml, re.M).group(1)
    assert f'requires-python = ">={version},' in pyproject

    staged = tmp_path / "staged"
    out = subprocess.run(["bash", str(REPO / "cog/stage.sh"), str(staged)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (staged / "requirements.txt").read_bytes() == (REPO / "trainer/requirements.lock").read_bytes()
    assert (staged / "cog.yaml").read_bytes() == (REPO / "cog/cog.yaml").read_bytes()
    assert (staged / "train.py").read_bytes() == TRAIN_PY.read_bytes()
    ours = sorted(p.name for p in (REPO / "trainer/loraforge_trainer").glob("*.py"))
    assert sorted(p.name for p in (staged / "loraforge_trainer").iterdir()) == ours
    # In the staged folder the script runs the trainer copied beside it.
    where = subprocess.run(
        [sys.executable, "-c", "import train; print(train.trainer_dir())"],
        cwd=staged, capture_output=True, text=True, env={**os.environ, "LORAFORGE_TRAINER_DIR": ""},
    )
    assert where.stdout.strip() == str(staged)
    again = subprocess.run(["bash", str(REPO / "cog/stage.sh"), str(staged)], capture_output=True, text=True)
    assert again.returncode == 1 and "not empty" in again.stderr


def _fake_cog() -> types.ModuleType:
    """The three names train.py takes from Cog, shaped as Cog 0.23's are: `Input(...)` as a
    default, `BaseModel` subclasses made dataclasses, `Path` a pathlib.Path (subclass)."""
    import dataclasses

    cog = types.ModuleType("cog")

    class Input:
        def __init__(self, description=None, default=None, **kw):
            self.description = description
            self.default = default

    class BaseModel:
        def __init_subclass__(cls, **kw):
            super().__init_subclass__()
            dataclasses.dataclass(cls)

    cog.Input = Input
    cog.BaseModel = BaseModel
    cog.Path = type("Path", (type(Path()),), {})
    return cog


def test_the_cog_entry(tmp_path, server, tiny_model, dataset, monkeypatch, capfd):
    import dataclasses
    import importlib
    import inspect

    monkeypatch.setitem(sys.modules, "cog", _fake_cog())
    module = importlib.reload(cog_train)
    try:
        sig = inspect.signature(module.train)
        assert list(sig.parameters) == ["dataset_url", "spec", "loraforge_instance"]
        assert all(p.annotation is str for p in sig.parameters.values())
        assert sig.parameters["loraforge_instance"].default.default == "", "optional"
        assert sig.return_annotation is module.TrainingOutput
        assert [f.name for f in dataclasses.fields(module.TrainingOutput)] == ["weights"]

        server.routes["/ds.zip"] = make_zip(dataset)
        with pytest.raises(RuntimeError) as e:
            module.train(dataset_url=server.url("/ds.zip"), spec=json.dumps(make_spec(tiny_model, rank=0)))
        failure = json.loads(str(e.value))
        assert failure["code"] == "bad_spec"
        printed = [line for line in capfd.readouterr().out.splitlines() if line.strip()]
        assert json.loads(printed[-1]) == failure, "the trainer's error line was the last line"

        with pytest.raises(RuntimeError) as e:
            module.train(dataset_url=server.url("/ds.zip"), spec="nope")
        assert json.loads(str(e.value))["code"] == "bad_job"

        out = module.train(
            dataset_url=server.url("/ds.zip"),
            spec=json.dumps(make_spec(tiny_model, steps=1)),
            loraforge_instance="loraforge-0193-1",
        )
        assert isinstance(out.weights, Path) and out.weights.name == "weights.tar"
        with tarfile.open(out.weights) as tar:
            assert [m.name for m in tar.getmembers()] == EXPECTED_MEMBERS
    finally:
        monkeypatch.delitem(sys.modules, "cog")
        importlib.reload(cog_train)
    assert cog_train._cog is None, "without Cog the CLI still imports"


def test_the_instance_tag_is_a_declared_input_the_training_ignores(tmp_path, monkeypatch):
    """The control plane tags each training with input `loraforge_instance` (INSTANCE_TAG in
    crates/replicate) to find it again; a Cog that refuses undeclared inputs takes it only if
    train() declares it, and the training must not depend on it."""
    import importlib
    import inspect

    types_rs = (REPO / "crates/replicate/src/types.rs").read_text()
    tag = re.search(r'pub const INSTANCE_TAG: &str = "(\w+)";', types_rs).group(1)
    monkeypatch.setitem(sys.modules, "cog", _fake_cog())
    module = importlib.reload(cog_train)
    try:
        assert tag in inspect.signature(module.train).parameters, "the tag the Rust side sends is declared"
        calls = []

        def run_training(dataset_url, spec, output, work=None):
            calls.append((dataset_url, spec, work))
            output.write_bytes(b"tar")

        monkeypatch.setattr(module, "run_training", run_training)
        spec = {"steps": 1}
        tagged = module.train(dataset_url="http://127.0.0.1:9/ds.zip", spec=json.dumps(spec), **{tag: "loraforge-x-1"})
        untagged = module.train(dataset_url="http://127.0.0.1:9/ds.zip", spec=json.dumps(spec))
        assert calls == [("http://127.0.0.1:9/ds.zip", spec, None)] * 2, "the tag changes nothing"
        assert tagged.weights.read_bytes() == untagged.weights.read_bytes() == b"tar"
    finally:
        monkeypatch.delitem(sys.modules, "cog")
        importlib.reload(cog_train)
