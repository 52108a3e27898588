"""Fixtures for cog/train.py's tests: the tiny SDXL-shaped model and images of the trainer's
tests (`loraforge_trainer.testing`, built at test time, no downloads), dataset zips, and a
loopback HTTP server that serves them the way the control plane's dataset zip link does."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "cog" / "train.py"
sys.path.insert(0, str(REPO / "trainer"))
sys.path.insert(0, str(REPO / "cog"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One intra-op thread: see trainer/tests/conftest.py (2 threads on a busy 2-core box are slower).
os.environ.setdefault("LORAFORGE_TORCH_THREADS", "1")

TRIGGER = "zxq"
# The signed link's query: it must never show up in what the script prints.
SIG = "sig=SECRET-SIGNATURE-0123456789"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from loraforge_trainer import testing

    return testing.make_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> dict[str, bytes]:
    """The zip's entries as the control plane names them: NN.png with NN.txt (the last image
    without a caption, as a dataset image may be)."""
    from loraforge_trainer import testing

    folder = testing.make_images(tmp_path_factory.mktemp("images"), trigger=TRIGGER)
    entries: dict[str, bytes] = {}
    for i, png in enumerate(sorted(folder.glob("*.png"))):
        entries[f"{i:02}.png"] = png.read_bytes()
        txt = png.with_suffix(".txt")
        if txt.exists():
            entries[f"{i:02}.txt"] = txt.read_bytes()
    return entries


def make_zip(entries: dict[str, bytes] | list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        items = entries.items() if isinstance(entries, dict) else entries
        for name, data in items:
            z.writestr(name, data)
    return buf.getvalue()


def make_spec(tiny_model: Path, **over) -> dict:
    """A spec as the control plane hands it to the worker (trainer/README.md)."""
    spec = {
        "job_id": "job-cog",
        "base_model": str(tiny_model),
        "type": "lora",
        "rank": 4,
        "alpha": 4.0,
        "dropout": 0.0,
        "target_modules": ["to_k", "to_q", "to_v", "to_out.0"],
        "steps": 4,
        "learning_rate": 1e-3,
        "batch_size": 1,
        "optimizer": "adamw",
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "resolution": 64,
        "trigger_words": [TRIGGER],
        "seed": 7,
        "checkpoint_every": 2,
        "validation": {"steps": 2},
    }
    spec.update(over)
    return spec


class Server:
    """Serves `routes[path]` (bytes) at http://127.0.0.1:PORT/path; `fail[path]` lists statuses
    to answer first (one per request), before the bytes."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.fail: dict[str, list[int]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                outer.requests.append(self.path)
                pending = outer.fail.get(path)
                if pending:
                    self.send_response(pending.pop(0))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.routes.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}?{SIG}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


class Result:
    def __init__(self, proc: subprocess.CompletedProcess, output: Path):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.output = output
        self.lines = [line for line in proc.stdout.splitlines() if line.strip()]

    @property
    def last(self) -> dict:
        return json.loads(self.lines[-1])

    def json_lines(self) -> list[dict]:
        out = []
        for line in self.lines:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out


def run_cli(tmp: Path, url: str, spec: dict | str, *, env: dict | None = None, cwd: Path | None = None,
            script: Path = TRAIN_PY, timeout: float = 600) -> Result:
    spec_path = tmp / "spec.json"
    spec_path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    output = tmp / "out" / "weights.tar"
    proc = subprocess.run(
        [sys.executable, str(script), "--dataset-url", url, "--spec", str(spec_path), "--output", str(output)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc, output)
