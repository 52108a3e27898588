"""Tests of docker/runpod_handler.py against a fake `loraforge` (no RunPod SDK needed).

Run: `python -m pytest docker/tests -q` (scripts/test.sh uses the trainer venv's pytest).
The fake is a small Python script named by LORAFORGE_BIN; it records its arguments and
environment to a JSON file and behaves as FAKE_MODE says.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

HANDLER = Path(__file__).resolve().parents[1] / "runpod_handler.py"
TOKEN = "tok-SECRET-0123456789abcdef"
LORA = "0193a6b2-7c1d-7e4f-9a2b-3c4d5e6f7a8b"

FAKE = textwrap.dedent(
    """\
    import json, os, signal, sys, time
    mode = os.environ.get("FAKE_MODE", "ok")
    record = os.environ["FAKE_RECORD"]
    def write(extra=None):
        data = {"argv": sys.argv[1:], "env": dict(os.environ), "pid": os.getpid()}
        data.update(extra or {})
        tmp = record + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, record)
    if mode == "wait":  # like the worker: SIGTERM -> checkpoint, stopped line, exit 10
        def on_term(signum, frame):
            with open(record + ".term", "w") as f:
                f.write("TERM")
            try:  # the reader may be gone (the parent died)
                print(json.dumps({"event": "error", "code": "stopped", "reason": "signal SIGTERM", "exit_code": 10}), flush=True)
            except BrokenPipeError:
                pass
            os._exit(10)
        signal.signal(signal.SIGTERM, on_term)
        write()
        while True:
            time.sleep(0.05)
    if mode == "stubborn":  # ignores SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        write()
        while True:
            time.sleep(0.05)
    write()
    print("fake worker: running", file=sys.stderr, flush=True)
    if mode == "ok":
        sys.exit(0)
    if mode == "fail":
        print(json.dumps({"event": "note", "n": 1}), flush=True)
        print("", flush=True)
        print(json.dumps({"event": "error", "code": "upload_failed", "reason": "an upload failed", "exit_code": 11}), flush=True)
        sys.exit(11)
    if mode == "garbage":
        print("not json at the end", flush=True)
        sys.exit(3)
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def load_handler():
    spec = importlib.util.spec_from_file_location("runpod_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def rh(tmp_path, monkeypatch):
    fake = tmp_path / "loraforge"
    fake.write_text(f"#!{sys.executable}\n" + FAKE)
    fake.chmod(0o755)
    monkeypatch.setenv("LORAFORGE_BIN", str(fake))
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.delenv("LORAFORGE_WORKER_TOKEN", raising=False)
    original = signal.getsignal(signal.SIGTERM)
    module = load_handler()
    yield module
    signal.signal(signal.SIGTERM, original)


def record(tmp_path):
    return json.loads((tmp_path / "record.json").read_text())


def job(**overrides):
    inp = {"server": "http://10.0.0.5:8080", "lora_id": LORA, "token": TOKEN}
    inp.update(overrides)
    return {"id": "rp-job-1", "input": inp}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_for_file(path, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        await asyncio.sleep(0.02)


def test_env_is_passed_and_the_token_never_printed(rh, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FAKE_MODE", "ok")
    monkeypatch.setenv("HF_TOKEN", "hf-from-the-endpoint")
    out = asyncio.run(
        rh.handler(job(env={"LORAFORGE_WORKER_SCRATCH": "/runpod-volume/scratch", "LORAFORGE_LOG": "debug"}))
    )
    assert out == {"exit_code": 0, "outcome": None}
    rec = record(tmp_path)
    assert rec["argv"] == ["worker"], "the worker is run with no flags"
    env = rec["env"]
    assert env["LORAFORGE_SERVER"] == "http://10.0.0.5:8080"
    assert env["LORAFORGE_LORA_ID"] == LORA
    assert env["LORAFORGE_WORKER_TOKEN"] == TOKEN
    assert env["LORAFORGE_WORKER_SCRATCH"] == "/runpod-volume/scratch"
    assert env["LORAFORGE_LOG"] == "debug"
    assert env["HF_TOKEN"] == "hf-from-the-endpoint", "the container's own environment is inherited"
    assert env["LORAFORGE_WORKER_EXIT_WITH_PARENT"] == "1"
    captured = capfd.readouterr()
    assert "fake worker: running" in captured.err, "the worker's stderr is streamed"
    assert TOKEN not in captured.out + captured.err
    assert LORA in captured.err
    assert TOKEN not in json.dumps(out)


def test_a_sample_batch_in_env_runs_the_worker_in_sample_mode(rh, tmp_path, monkeypatch):
    # The control plane's sample attempts name their batch in `env`
    # (crates/runpod/src/serverless_backend.rs); the worker reads it as its sample mode.
    monkeypatch.setenv("FAKE_MODE", "ok")
    batch = "0193a1b2-0000-7000-8000-00000000b0a7"
    out = asyncio.run(rh.handler(job(env={"LORAFORGE_SAMPLE_BATCH": batch})))
    assert out == {"exit_code": 0, "outcome": None}
    env = record(tmp_path)["env"]
    assert env["LORAFORGE_SAMPLE_BATCH"] == batch
    assert env["LORAFORGE_WORKER_TOKEN"] == TOKEN


def test_exit_code_and_last_json_line_are_returned(rh, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FAKE_MODE", "fail")
    out = asyncio.run(rh.handler(job()))
    assert out == {
        "exit_code": 11,
        "outcome": {"event": "error", "code": "upload_failed", "reason": "an upload failed", "exit_code": 11},
    }
    assert "upload_failed" in capfd.readouterr().err, "the worker's stdout is copied to the log"


def test_a_last_line_that_is_not_json_gives_no_outcome(rh, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "garbage")
    assert asyncio.run(rh.handler(job())) == {"exit_code": 3, "outcome": None}


def test_a_worker_killed_by_a_signal_reports_128_plus_the_signal(rh, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "killed")
    assert asyncio.run(rh.handler(job())) == {"exit_code": 128 + signal.SIGKILL, "outcome": None}


@pytest.mark.parametrize(
    "bad, says",
    [
        (None, "not an object"),
        ({"id": "x"}, '"input"'),
        ({"id": "x", "input": "server=…"}, '"input"'),
        (job(server=None), '"server"'),
        (job(server=""), '"server"'),
        (job(server="ftp://host/x"), "http"),
        (job(server="http://"), "http"),
        (job(lora_id=None), '"lora_id"'),
        (job(lora_id="../etc"), '"lora_id"'),
        (job(lora_id=42), '"lora_id"'),
        (job(token=None), '"token"'),
        (job(token="  "), '"token"'),
        (job(token=TOKEN + "\n"), '"token"'),
        (job(env=["A=1"]), '"env"'),
        (job(env={"A": 1}), '"env".A'),
        (job(env={"1BAD": "x"}), "invalid variable name"),
        (job(env={"LORAFORGE_WORKER_TOKEN": "other"}), "may not set LORAFORGE_WORKER_TOKEN"),
    ],
)
def test_bad_input_is_an_error_and_starts_nothing(rh, tmp_path, capfd, bad, says):
    out = asyncio.run(rh.handler(bad))
    assert set(out) == {"error"}
    assert says in out["error"]
    assert not (tmp_path / "record.json").exists()
    captured = capfd.readouterr()
    assert TOKEN not in out["error"] + captured.out + captured.err


def test_a_missing_program_is_an_error(rh, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFORGE_BIN", str(tmp_path / "nope"))
    out = asyncio.run(rh.handler(job()))
    assert set(out) == {"error"} and "not found" in out["error"]


def test_sigterm_is_forwarded_to_the_worker_and_chained(rh, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "wait")
    seen = []
    # Stands in for the RunPod SDK's shutdown handler, installed before the first job.
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))

    async def scenario():
        task = asyncio.create_task(rh.handler(job()))
        await wait_for_file(tmp_path / "record.json")
        os.kill(os.getpid(), signal.SIGTERM)  # what RunPod does to the container's process
        return await asyncio.wait_for(task, timeout=15)

    out = asyncio.run(scenario())
    assert (tmp_path / "record.json.term").read_text() == "TERM", "the worker got SIGTERM"
    assert out["exit_code"] == 10
    assert out["outcome"]["reason"] == "signal SIGTERM"
    assert seen == [signal.SIGTERM], "the previous SIGTERM handler still runs"
    assert not alive(record(tmp_path)["pid"])


def test_a_cancelled_job_stops_the_worker(rh, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "wait")

    async def scenario():
        task = asyncio.create_task(rh.handler(job()))
        await wait_for_file(tmp_path / "record.json")
        task.cancel()  # what RunPod's SDK does when the job is cancelled or times out
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert (tmp_path / "record.json.term").read_text() == "TERM"
    assert not alive(record(tmp_path)["pid"])


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(rh, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "stubborn")
    monkeypatch.setenv("LORAFORGE_HANDLER_STOP_GRACE_SECS", "0.3")

    async def scenario():
        task = asyncio.create_task(rh.handler(job()))
        await wait_for_file(tmp_path / "record.json")
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert not alive(record(tmp_path)["pid"]), "never left running"
    assert 0.25 <= took < 10


def test_the_worker_dies_with_the_handler_process(tmp_path):
    """If the handler's process itself dies (SIGKILL), the kernel sends the worker SIGTERM."""
    fake = tmp_path / "loraforge"
    fake.write_text(f"#!{sys.executable}\n" + FAKE)
    fake.chmod(0o755)
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""\
            import asyncio, importlib.util
            spec = importlib.util.spec_from_file_location("runpod_handler", {str(HANDLER)!r})
            m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
            asyncio.run(m.handler({{"id": "j", "input": {{"server": "http://h:1", "lora_id": "l", "token": "t"}}}}))
            """
        )
    )
    env = dict(os.environ, LORAFORGE_BIN=str(fake), FAKE_RECORD=str(tmp_path / "record.json"), FAKE_MODE="wait")
    import subprocess

    proc = subprocess.Popen([sys.executable, str(driver)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "record.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the fake worker never started"
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while not (tmp_path / "record.json.term").exists():
            assert time.monotonic() < deadline, "the worker did not get SIGTERM when its parent died"
            time.sleep(0.02)
        pid = record(tmp_path)["pid"]
        while alive(pid):
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
