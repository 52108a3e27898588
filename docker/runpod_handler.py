"""RunPod serverless handler: one RunPod job is one `loraforge worker` run.

The control plane submits a job whose input is

    {"server": URL, "lora_id": ID, "token": TOKEN, "env": {optional NAME: "value", ...}}

and this handler runs `loraforge worker` (no flags) with LORAFORGE_SERVER, LORAFORGE_LORA_ID and
LORAFORGE_WORKER_TOKEN set from it, plus the optional extra variables. A sample batch's attempt
names its batch there (LORAFORGE_SAMPLE_BATCH), which puts the worker in sample mode. The worker's stderr is
this process's stderr (RunPod's log); its stdout (nothing, or on failure one last
`{"event":"error",...}` line; docs/worker-protocol.md) is read here and also copied to stderr.
The handler returns

    {"exit_code": N, "outcome": <the last stdout line parsed as a JSON object, or null>}

for every run, whatever the exit code: the control plane learns the real outcome from the
worker's own protocol calls, so this value is informational. A worker killed by a signal gets
exit_code 128 + the signal number. Input that cannot start a worker (missing or malformed
fields) returns {"error": "..."}, which RunPod records as a failed job. The token is never
logged or returned.

Stopping: a SIGTERM to this process (RunPod scaling the worker down) is forwarded to the
running worker, which stops its trainer at a checkpoint and exits 10; the handler then returns
as usual and RunPod's SDK shuts down after it (the SDK's own SIGTERM handler still runs: ours
chains to it). A job cancelled through RunPod (the SDK cancels the handler's task) also sends
the worker SIGTERM. Either way, a worker still running LORAFORGE_HANDLER_STOP_GRACE_SECS
(default 120) after the SIGTERM is killed, and the worker is started with the parent-death
signal set (and LORAFORGE_WORKER_EXIT_WITH_PARENT=1), so it never outlives this process.

The RunPod SDK is imported only in main(): `handler` can be imported and tested without it.
`LORAFORGE_BIN` names the loraforge program (default `loraforge`, looked up on PATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

PROGRAM_ENV = "LORAFORGE_BIN"
STOP_GRACE_ENV = "LORAFORGE_HANDLER_STOP_GRACE_SECS"
DEFAULT_STOP_GRACE_SECS = 120.0

# Set from the job's fields; the `env` object may not set them.
RESERVED = ("LORAFORGE_SERVER", "LORAFORGE_LORA_ID", "LORAFORGE_WORKER_TOKEN")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# LoRA ids are UUIDs; anything path- or shell-like is refused.
_LORA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Workers started by this process and not yet reaped, for SIGTERM forwarding.
_running: set[asyncio.subprocess.Process] = set()
# The SIGTERM handler that was in place before ours (RunPod's SDK's, when it runs us).
_chained: Any = None


class BadInput(ValueError):
    pass


def log(message: str) -> None:
    print(f"runpod_handler: {message}", file=sys.stderr, flush=True)


def parse_input(job: Any) -> tuple[str, str, str, dict[str, str]]:
    """(server, lora_id, token, extra env) from a RunPod job, or BadInput saying what is wrong.
    Messages never contain the token."""
    if not isinstance(job, dict):
        raise BadInput("the job is not an object")
    inp = job.get("input")
    if not isinstance(inp, dict):
        raise BadInput('the job has no "input" object')
    server = inp.get("server")
    if not isinstance(server, str) or not server.strip():
        raise BadInput('"server" must be the control plane\'s base URL (a non-empty string)')
    server = server.strip()
    try:
        parts = urlsplit(server)
    except ValueError as e:
        raise BadInput(f'"server" is not a URL: {e}') from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInput('"server" must be an http:// or https:// URL')
    lora_id = inp.get("lora_id")
    if not isinstance(lora_id, str) or not _LORA_ID.match(lora_id):
        raise BadInput('"lora_id" must be the LoRA\'s id (letters, digits, ".", "_", "-"; at most 128)')
    token = inp.get("token")
    if not isinstance(token, str) or not token.strip():
        raise BadInput('"token" must be the worker token the control plane issued (a non-empty string)')
    if any(c in token for c in "\r\n\0"):
        raise BadInput('"token" contains a line break or NUL')
    extra = inp.get("env")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise BadInput('"env" must be an object of NAME: "value" strings')
    for name, value in extra.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise BadInput(f'"env" has an invalid variable name: {name!r}')
        if name in RESERVED:
            raise BadInput(f'"env" may not set {name}; it comes from the job\'s own fields')
        if not isinstance(value, str) or "\0" in value:
            raise BadInput(f'"env".{name} must be a string (without NUL)')
    return server, lora_id, token, dict(extra)


def stop_grace_secs() -> float:
    try:
        return max(0.0, float(os.environ.get(STOP_GRACE_ENV, DEFAULT_STOP_GRACE_SECS)))
    except ValueError:
        return DEFAULT_STOP_GRACE_SECS


def _forward_sigterm(signum: int, frame: Any) -> None:
    for proc in list(_running):
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    if callable(_chained):
        _chained(signum, frame)
    elif not _running and _chained != signal.SIG_IGN:
        # No worker to wait for and nobody else handles it: end as SIGTERM would have.
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def install_sigterm_forwarding() -> bool:
    """Makes SIGTERM go to every running worker first, then to the handler that was there
    (RunPod's SDK installs its own before the first job). Idempotent; main thread only."""
    global _chained
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is not _forward_sigterm:
        _chained = current
        signal.signal(signal.SIGTERM, _forward_sigterm)
    return True


def _parent_death_signal():
    """A preexec_fn that makes the kernel send the worker SIGTERM when this process dies
    (Linux), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the worker is gone."""
    try:
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), timeout=grace)
            except asyncio.TimeoutError:
                log(f"the worker did not stop {grace:g} s after SIGTERM; killing it")
    finally:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()


def _outcome(line: str | None) -> dict[str, Any] | None:
    if not line:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def handler(job: Any) -> dict[str, Any]:
    """Runs one `loraforge worker` for a RunPod job; see the module's documentation."""
    try:
        server, lora_id, token, extra = parse_input(job)
    except BadInput as e:
        log(f"refused job {job.get('id') if isinstance(job, dict) else None!r}: {e}")
        return {"error": f"invalid input: {e}"}
    job_id = job.get("id")
    program = os.environ.get(PROGRAM_ENV) or "loraforge"
    resolved = shutil.which(program)
    if resolved is None:
        log(f"cannot run {program!r}: not found")
        return {"error": f"the loraforge program ({program!r}, from {PROGRAM_ENV} or the default) was not found"}

    env = dict(os.environ)
    env.update(extra)
    env["LORAFORGE_WORKER_EXIT_WITH_PARENT"] = env.get("LORAFORGE_WORKER_EXIT_WITH_PARENT") or "1"
    env["LORAFORGE_SERVER"] = server
    env["LORAFORGE_LORA_ID"] = lora_id
    env["LORAFORGE_WORKER_TOKEN"] = token
    names = ", ".join(sorted(extra)) or "none"
    log(f"job {job_id!r}: starting `{resolved} worker` for LoRA {lora_id} at {server} (extra env: {names})")

    install_sigterm_forwarding()
    proc = await asyncio.create_subprocess_exec(
        resolved,
        "worker",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,  # inherited: the worker's log goes straight to ours
        env=env,
        preexec_fn=_parent_death_signal(),
    )
    _running.add(proc)
    last: str | None = None
    try:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            text = raw.decode("utf-8", "replace").strip()
            if text:
                last = text
                print(f"worker stdout: {text}", file=sys.stderr, flush=True)
        code = await proc.wait()
    except BaseException:
        # Cancelled (a RunPod job stop) or broken: the worker must not outlive the job.
        log(f"job {job_id!r}: stopping the worker")
        await _stop(proc, stop_grace_secs())
        raise
    finally:
        if proc.returncode is None:
            await _stop(proc, stop_grace_secs())
        _running.discard(proc)
    exit_code = code if code >= 0 else 128 - code
    log(f"job {job_id!r}: the worker exited {exit_code}")
    return {"exit_code": exit_code, "outcome": _outcome(last)}


def main() -> None:
    import runpod  # only here: the handler itself is importable without the SDK

    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
