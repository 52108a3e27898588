"""Generates the inputs and times loraforge against Pillow and safetensors+torch.

Run through bench/file_checks.sh, which builds the release binary and picks the Python.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def generate_images(folder: Path, count: int) -> int:
    """A quarter each of 1024² JPEG, 1024² PNG, 2048² JPEG, 2048² PNG: smooth shapes plus
    sensor-like noise, each image different. Returns the total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = [(1024, "jpg"), (1024, "png"), (2048, "jpg"), (2048, "png")]
    rng = np.random.default_rng(42)
    total = 0
    for i in range(count):
        side, ext = kinds[i % 4]
        y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
        a, b, c = rng.uniform(2, 12, 3)
        base = np.stack([np.sin(x * a + y * b), np.cos(y * c - x * a), np.sin((x + y) * b)], axis=-1)
        img = (base + 1) * 110 + rng.normal(0, 6, (side, side, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        path = folder / f"img{i:03d}.{ext}"
        if ext == "jpg":
            Image.fromarray(img).save(path, quality=92)
        else:
            Image.fromarray(img).save(path, compress_level=6)
        total += path.stat().st_size
    return total


def generate_lora(path: Path, megabytes: int) -> int:
    """A kohya-style LoRA of F16 tensors: rank 64, 2048-wide modules (1 MiB per module)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    modules = max(1, megabytes * 1_000_000 // (2 * 64 * 2048 * 2))
    tensors = {}
    for m in range(modules):
        base = f"lora_unet_down_blocks_{m // 100}_attentions_0_transformer_blocks_{m % 100}_attn1_to_q"
        tensors[f"{base}.lora_down.weight"] = (rng.standard_normal((64, 2048), dtype=np.float32) * 0.01).astype(np.float16)
        tensors[f"{base}.lora_up.weight"] = (rng.standard_normal((2048, 64), dtype=np.float32) * 0.01).astype(np.float16)
        tensors[f"{base}.alpha"] = np.array(32.0, dtype=np.float16)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"})
    return path.stat().st_size


def pillow_check(files):
    for f in files:
        with Image.open(f) as im:
            im.verify()
        with Image.open(f) as im:
            im.load()


def torch_nan_scan(path):
    import torch
    from safetensors import safe_open

    bad = 0
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            if torch.isnan(t).any():
                bad += 1
    return bad


def timed(fn, runs=3):
    fn()  # warm the page cache and imports
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_cli(argv, env_extra, expect):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFORGE_")}
    env.update(env_extra)

    def go():
        out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if out.returncode != expect:
            sys.exit(f"{argv} exited {out.returncode}:\n{out.stdout.decode()[-2000:]}\n{out.stderr.decode()[-2000:]}")

    return go


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--lora-mb", type=int, default=200)
    a = p.parse_args()
    work = Path(a.work)
    cores = os.cpu_count()

    print(f"generating {a.images} images and a {a.lora_mb} MB LoRA in {work} …", file=sys.stderr)
    img_dir = work / "images"
    img_bytes = generate_images(img_dir, a.images)
    files = sorted(img_dir.iterdir())
    lora = work / "bench.safetensors"
    lora_bytes = generate_lora(lora, a.lora_mb)

    # Accept everything the generator makes: the bench measures the checks, not the rules.
    rules = {
        "LORAFORGE_DATASET_MAX_IMAGES": "100000",
        "LORAFORGE_IMAGE_MAX_BYTES": str(1 << 30),
        "LORAFORGE_LORA_MAX_BYTES": str(1 << 34),
    }
    rows = []
    check = [a.bin, "check-dataset", str(img_dir)]
    one = timed(run_cli(check, {**rules, "RAYON_NUM_THREADS": "1"}, 0))
    rows.append(("dataset", "loraforge check-dataset, 1 core", one, img_bytes, a.images))
    allc = timed(run_cli(check, rules, 0))
    rows.append(("dataset", f"loraforge check-dataset, {cores} cores", allc, img_bytes, a.images))
    pil = timed(lambda: pillow_check(files))
    rows.append(("dataset", "Pillow verify() + load(), 1 core", pil, img_bytes, a.images))

    inspect = [a.bin, "inspect", str(lora), "--json"]
    one = timed(run_cli(inspect, {**rules, "RAYON_NUM_THREADS": "1"}, 0))
    rows.append(("lora", "loraforge inspect, 1 core", one, lora_bytes, None))
    allc = timed(run_cli(inspect, rules, 0))
    rows.append(("lora", f"loraforge inspect, {cores} cores", allc, lora_bytes, None))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tt = timed(lambda: torch_nan_scan(lora))
    rows.append(("lora", "safe_open + torch.isnan(t).any(), 1 torch thread", tt, lora_bytes, None))
    torch.set_num_threads(threads)
    tt = timed(lambda: torch_nan_scan(lora))
    rows.append(("lora", f"safe_open + torch.isnan(t).any(), {threads} torch threads", tt, lora_bytes, None))

    print(f"| check | contender | median s | throughput |")
    print(f"| --- | --- | --- | --- |")
    for kind, who, secs, nbytes, n in rows:
        rate = f"{n / secs:.1f} images/s, {nbytes / secs / 1e6:.0f} MB/s" if n else f"{nbytes / secs / 1e9:.2f} GB/s"
        print(f"| {kind} | {who} | {secs:.3f} | {rate} |")
    print(f"\nimages: {a.images} files, {img_bytes / 1e6:.0f} MB; LoRA: {lora_bytes / 1e6:.0f} MB; "
          f"Python {sys.version.split()[0]}, Pillow {Image.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
