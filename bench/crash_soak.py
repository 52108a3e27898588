#!/usr/bin/env python3
"""Crash soak (issue 9, item 0): N LoRA lifecycles on the tiny SDXL-shaped model with `serve`
killed with SIGKILL at random moments and restarted 0-3 s later on the same data dir.

Python standard library only; run through bench/crash_soak.sh, which builds the release binary
and the tiny model and sets the environment. Reports LoRAs completed / failed / lost / stuck,
LoRAs trained again after a success (runs after a `trained` run in `training_runs`), processes
left over (workers, trainers) and files left over (job folders, stored checkpoints); exits 1 if
any of those but `completed` is non-zero.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

TERMINAL = ("completed", "failed", "cancelled")


def noise_png(w, h, seed):
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + bytes(rng.getrandbits(8) for _ in range(w * 3)) for _ in range(h))

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Service:
    """`loraforge serve` on a fixed port (workers keep the URL across restarts)."""

    def __init__(self, args, env):
        self.args = args
        self.env = env
        self.proc = None
        self.lock = threading.Lock()
        self.starts = 0
        self.kills = 0
        self.url = f"http://127.0.0.1:{args.port}"

    def start(self):
        with self.lock:
            logf = open(os.path.join(self.args.dir, f"serve-{self.starts}.log"), "wb")
            self.starts += 1
            self.proc = subprocess.Popen(
                [self.args.bin, "serve", "--bind", f"127.0.0.1:{self.args.port}",
                 "--data-dir", self.args.data],
                env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
            )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):
                    return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("serve did not come up within 120 s")

    def kill9(self):
        with self.lock:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self):
        with self.lock:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def pid(self):
        return self.proc.pid if self.proc else None


def request(svc, token, method, path, body=None, headers=None, timeout=30):
    """One HTTP call; (status, json) or raises OSError when the service is down."""
    h = {"Authorization": f"Bearer {token}"}
    h.update(headers or {})
    data = None
    if body is not None:
        if isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
    req = urllib.request.Request(svc.url + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, raw.decode(errors="replace")


def retrying(svc, what, call, give_up):
    """Calls `call` until it answers (anything but a dropped connection or a 5xx), as a client
    of a service that restarts would."""
    while True:
        try:
            status, body = call()
            if status < 500:
                return status, body
        except (OSError, ValueError, http.client.HTTPException):
            pass
        if time.time() > give_up:
            raise RuntimeError(f"{what}: no answer before the deadline")
        time.sleep(0.3)


class Soak:
    def __init__(self, args, svc):
        self.args = args
        self.svc = svc
        self.lock = threading.Lock()
        self.loras = {}  # id -> last status
        self.created = 0
        self.uploading = 0  # client uploads in flight
        self.phases = {}  # what was in flight at each kill
        self.errors = []
        self.next = 0
        self.stop_killing = threading.Event()

    def token(self, user):
        out = subprocess.run(
            [self.args.bin, "token", "--user", user, "--data-dir", self.args.data],
            check=True, capture_output=True, env=self.svc.env,
        )
        return out.stdout.decode().strip()

    def lifecycle(self, n, give_up):
        user = str(uuid.uuid4())
        token = self.token(user)
        boundary = uuid.uuid4().hex
        parts = []
        for i in range(3):
            parts.append(
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
                f"filename=\"img{i}.png\"\r\nContent-Type: image/png\r\n\r\n".encode()
                + noise_png(96, 96, n * 10 + i) + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        with self.lock:
            self.uploading += 1
        try:
            status, ds = retrying(self.svc, "dataset upload", lambda: request(
                self.svc, token, "POST", "/api/v1/datasets", body,
                {"Content-Type": f"multipart/form-data; boundary={boundary}"}), give_up)
        finally:
            with self.lock:
                self.uploading -= 1
        if status != 201:
            raise RuntimeError(f"dataset upload: {status} {ds}")
        create = {
            "name": f"Soak {n}",
            "dataset_id": ds["dataset_id"],
            "params": {
                "base_model": self.args.model, "steps": self.args.steps, "resolution": 64,
                "rank": 4, "alpha": 8, "lr_warmup_steps": 0, "trigger_words": ["zxq"],
            },
        }
        key = str(uuid.uuid4())
        status, lora = retrying(self.svc, "create", lambda: request(
            self.svc, token, "POST", "/api/v1/lora-models", create,
            {"Idempotency-Key": key}), give_up)
        if status not in (200, 201, 202):
            raise RuntimeError(f"create: {status} {lora}")
        lid = lora["lora_id"]
        with self.lock:
            self.loras[lid] = {"training_status": "pending", "token": token, "n": n}
            self.created += 1
        stuck_at = time.time() + self.args.stuck_min * 60
        while time.time() < stuck_at:
            try:
                status, s = request(self.svc, token, "GET", f"/api/v1/lora-models/{lid}/status")
            except (OSError, ValueError, http.client.HTTPException):
                time.sleep(0.3)
                continue
            if status == 404:
                with self.lock:
                    self.loras[lid]["training_status"] = "lost"
                return
            if status == 200:
                with self.lock:
                    self.loras[lid].update(s)
                if s["training_status"] in TERMINAL:
                    log(f"LoRA {n} {lid}: {s['training_status']}"
                        + (f" ({s.get('error')})" if s.get("error") else ""))
                    return
            time.sleep(0.5)

    def driver(self, give_up):
        # No new lifecycle after the deadline; those under way finish (or are stuck).
        while time.time() < give_up:
            with self.lock:
                if self.next >= self.args.n:
                    return
                n = self.next
                self.next += 1
            try:
                self.lifecycle(n, give_up + self.args.stuck_min * 60)
            except Exception as e:  # noqa: BLE001 - reported, the soak goes on
                with self.lock:
                    self.errors.append(f"lifecycle {n}: {e}")
                log(f"lifecycle {n}: {e}")

    def in_flight(self):
        with self.lock:
            phases = ["client upload"] * self.uploading
            for s in self.loras.values():
                st = s.get("training_status")
                if st in TERMINAL:
                    continue
                stage = s.get("stage") or st
                phases.append(f"{st}/{stage}")
            return phases

    def killer(self):
        rng = random.Random(self.args.seed)
        while not self.stop_killing.wait(rng.uniform(self.args.kill_min, self.args.kill_max)):
            phases = self.in_flight()
            for p in set(phases):
                self.phases[p] = self.phases.get(p, 0) + 1
            self.svc.kill9()
            log(f"kill -9 #{self.svc.kills} while: {', '.join(sorted(phases)) or 'idle'}")
            time.sleep(rng.uniform(0, 3))
            self.svc.start()


def leftover_processes(data, serve_pid):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == serve_pid:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if data in cmd and " serve " not in cmd:
            found.append(f"{pid}: {cmd[:200]}")
    return found


def leftover_files(data):
    found = []
    jobs = os.path.join(data, "jobs")
    if os.path.isdir(jobs):
        found += [os.path.join(jobs, e) for e in os.listdir(jobs)]
    ckpts = os.path.join(data, "blobs", "training-checkpoints")
    for root, _dirs, files in os.walk(ckpts):
        found += [os.path.join(root, f) for f in files]
    return found


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--kill-min", type=float, default=4)
    p.add_argument("--kill-max", type=float, default=15)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--deadline-min", type=float, default=240)
    p.add_argument("--stuck-min", type=float, default=20,
                   help="a LoRA not finished this long after its creation is stuck")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    args.data = os.path.join(args.dir, "data")
    if args.port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
    env = dict(os.environ)
    svc = Service(args, env)
    started = time.time()
    svc.start()
    soak = Soak(args, svc)
    give_up = started + args.deadline_min * 60
    drivers = [threading.Thread(target=soak.driver, args=(give_up,)) for _ in range(args.in_flight)]
    for t in drivers:
        t.start()
    killer = threading.Thread(target=soak.killer)
    killer.start()
    for t in drivers:
        t.join()
    soak.stop_killing.set()
    killer.join()
    if svc.proc.poll() is not None:
        svc.start()
    wall = time.time() - started
    log(f"all lifecycles done after {wall:.0f} s; {svc.kills} kills; checking what is left")

    # Runs trained again after a success, from the database itself.
    db = sqlite3.connect(f"file:{os.path.join(args.data, 'loraforge.db')}?mode=ro", uri=True)
    rows = db.execute("SELECT lora_id, attempt, outcome FROM training_runs").fetchall()
    runs = {}
    for lora, attempt, outcome in rows:
        runs.setdefault(lora, []).append((attempt, outcome))
    twice = 0
    for lora, rs in runs.items():
        trained = [a for a, o in rs if o == "trained"]
        if trained and any(a > min(trained) for a, _ in rs):
            twice += 1
            log(f"LoRA {lora} ran again after a success: {sorted(rs)}")
    per_lora = [len(rs) for rs in runs.values()]
    outcomes = {}
    for rs in runs.values():
        for _, o in rs:
            outcomes[o] = outcomes.get(o, 0) + 1
    failures = dict(db.execute("SELECT lora_id, failures FROM training_jobs").fetchall())
    db.close()

    # Leftovers: the engine ends and cleans up what it no longer needs within a few ticks.
    settle = time.time() + 90
    procs = leftover_processes(args.data, svc.pid())
    files = leftover_files(args.data)
    while (procs or files) and time.time() < settle:
        time.sleep(1)
        procs = leftover_processes(args.data, svc.pid())
        files = leftover_files(args.data)
    svc.stop()

    states = [s["training_status"] for s in soak.loras.values()]
    completed = states.count("completed")
    failed = states.count("failed") + states.count("cancelled")
    lost = states.count("lost")
    stuck = sum(1 for s in states if s not in TERMINAL and s != "lost")
    for lid, s in soak.loras.items():
        if s["training_status"] != "completed":
            log(f"not completed: {lid} {s.get('training_status')} {s.get('error')}")
    report = {
        "lifecycles_asked": args.n,
        "lifecycles_started": soak.next,
        "created": soak.created,
        "completed": completed,
        "failed": failed,
        "lost": lost,
        "stuck": stuck,
        "trained_again_after_success": twice,
        "leftover_processes": len(procs),
        "leftover_files": len(files),
        "kills": svc.kills,
        "kills_while": dict(sorted(soak.phases.items())),
        "runs": len(rows),
        "runs_per_lora_max": max(per_lora, default=0),
        "run_outcomes": dict(sorted(outcomes.items())),
        "counted_failures_total": sum(v or 0 for v in failures.values()),
        "wall_seconds": round(wall),
        "client_errors": soak.errors,
    }
    for x in procs + files:
        log(f"left over: {x}")
    print(json.dumps(report, indent=2))
    bad = failed + lost + stuck + twice + len(procs) + len(files) + len(soak.errors)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
