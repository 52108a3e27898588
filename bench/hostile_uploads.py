"""Hostile uploads against a running `loraforge serve` (issue 9 item 2); Python stdlib only.

    python3 bench/hostile_uploads.py URL TOKEN PID [CONCURRENCY] [KINDS]

For each kind of hostile upload, CONCURRENCY (default 8) requests at once, while one client keeps
making honest uploads (3 distinct 512×512 PNGs each). The server's RSS is sampled from
/proc/PID/status every 20 ms. Prints a markdown table: per kind, the answers the hostile
requests got, the peak RSS during the kind, and the honest uploads that succeeded meanwhile;
then the process's VmHWM.
"""

import http.client
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

BOUNDARY = "hostile" + uuid.uuid4().hex


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(w, h, depth, colour, seed, noise=False):
    """A PNG streamed row by row (a 40 MP bomb never exists decoded here)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row_len = w * channels * depth // 8
    comp = zlib.compressobj(9)
    out = []
    zero_row = b"\0" + b"\0" * row_len
    for y in range(h):
        if noise:
            row = b"\0" + os.urandom(row_len)
        elif y == 0:
            # A distinct first row per seed: no two bombs are duplicates.
            row = b"\0" + seed.to_bytes(8, "big") + b"\0" * (row_len - 8)
        else:
            row = zero_row
        out.append(comp.compress(row))
    out.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(out))
            + chunk(b"IEND", b""))


def part_head(name):
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def multipart(files):
    body = b"".join(part_head(n) + data + b"\r\n" for n, data in files)
    return body + f"--{BOUNDARY}--\r\n".encode()


class Target:
    def __init__(self, url, token):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.token = u.hostname, u.port, token

    def head(self, length):
        return (f"POST /api/v1/datasets HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {self.token}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()

    def send(self, length, chunks, timeout=300):
        """Sends a head and body chunks (stopping when the server stops reading); returns the
        status line's code and the response's size, or the error."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            s.sendall(self.head(length))
            try:
                for c in chunks:
                    s.sendall(c)
            except OSError:
                pass  # the server answered early and closed: read its answer
            data = b""
            try:
                while True:
                    got = s.recv(65536)
                    if not got:
                        break
                    data += got
            except OSError:
                pass
            if not data:
                return ("no answer", 0)
            return (data[9:12].decode(errors="replace"), len(data))
        except OSError as e:
            return (type(e).__name__, 0)
        finally:
            s.close()


def kinds():
    """name → function(target, seed) returning (code, response bytes)."""
    def tiny_parts(t, seed):
        one = part_head("p.png") + b"x\r\n"
        n = 8 * 1024 * 1024 // len(one)
        body = one * n + f"--{BOUNDARY}--\r\n".encode()
        return t.send(len(body), [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)])

    def huge_part(t, seed):
        size = 200 * 1024 * 1024
        head = part_head("huge.png")
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        block = b"\0" * (1 << 20)
        chunks = [head] + [block] * (size >> 20) + [tail]
        return t.send(len(head) + size + len(tail), chunks)

    def huge_declared(t, seed):
        return t.send(250 * 1000 * 1000, [])

    bombs16 = [png(8000, 5000, 16, 6, i) for i in range(3)]
    bombs8 = [png(8000, 5000, 8, 6, i + 10) for i in range(3)]

    def png16_bombs(t, seed):
        body = multipart([(f"b{i}.png", b) for i, b in enumerate(bombs16)])
        return t.send(len(body), [body])

    def png8_bombs(t, seed):
        body = multipart([(f"b{i}.png", b) for i, b in enumerate(bombs8)])
        return t.send(len(body), [body])

    return {"tiny_parts (8 MB, ~93k parts)": tiny_parts,
            "huge_part (one 200 MB part)": huge_part,
            "huge_declared (Content-Length 250 MB)": huge_declared,
            "png16_bombs (3 × 40 MP RGBA16, ~320 KB each)": png16_bombs,
            "png8_bombs (3 × 40 MP RGBA8, ~160 KB each)": png8_bombs}


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def field(self, name):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, self.field("VmRSS"))
            except OSError:
                return
            time.sleep(0.02)


class Honest(threading.Thread):
    """Uploads 3 distinct honest images again and again; counts outcomes."""

    def __init__(self, t):
        super().__init__(daemon=True)
        self.t, self.running, self.ok, self.failed, self.codes = t, True, 0, 0, {}

    def run(self):
        seed = 0
        while self.running:
            seed += 1
            files = [(f"h{seed}_{i}.png", png(512, 512, 8, 2, 0, noise=True)) for i in range(3)]
            body = multipart(files)
            conn = http.client.HTTPConnection(self.t.host, self.t.port, timeout=300)
            try:
                conn.request("POST", "/api/v1/datasets", body, {
                    "Authorization": "Bearer " + self.t.token,
                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                status = conn.getresponse().status
            except OSError as e:
                status = type(e).__name__
            finally:
                conn.close()
            if status == 201:
                self.ok += 1
            else:
                self.failed += 1
                self.codes[status] = self.codes.get(status, 0) + 1


def main():
    url, token, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    only = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else None
    t = Target(url, token)
    table = kinds()
    print(f"| kind ({concurrency} at once) | hostile answers | seconds | peak RSS MB | honest ok / failed |")
    print("| --- | --- | ---: | ---: | --- |")
    for name, fn in table.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        sampler = RssSampler(pid)
        sampler.start()
        honest = Honest(t)
        honest.start()
        results = []
        lock = threading.Lock()

        def one(i):
            r = fn(t, i)
            with lock:
                results.append(r)

        started = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.monotonic() - started
        # Let the honest client finish the upload in flight.
        honest.running = False
        honest.join(timeout=300)
        sampler.running = False
        sampler.join()
        answers = {}
        for code, size in results:
            key = f"{code} ({size // 1024} KB)" if size >= 1024 else f"{code} ({size} B)"
            answers[key] = answers.get(key, 0) + 1
        shown = ", ".join(f"{n}× {k}" for k, n in sorted(answers.items()))
        fails = f" {honest.codes}" if honest.codes else ""
        print(f"| {name} | {shown} | {took:.1f} | {sampler.peak / 1e6:.0f} | "
              f"{honest.ok} / {honest.failed}{fails} |", flush=True)
    hwm = RssSampler(pid).field("VmHWM")
    print(f"\nVmHWM of the server over the whole run: {hwm / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
