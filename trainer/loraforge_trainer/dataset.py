"""The training images: discovery, captions, the dataset hash and bucketed pixel tensors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .buckets import make_buckets, pick_bucket, resize_crop_box
from .errors import TrainerError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Item:
    path: Path
    caption: str
    width: int  # original size, after EXIF rotation
    height: int
    bucket: tuple[int, int]  # (width, height) trained at
    crop_left: int
    crop_top: int
    resized: tuple[int, int]

    @property
    def add_time_ids(self) -> list[int]:
        """SDXL micro-conditioning: original size, crop top-left, target size (all (h, w))."""
        bw, bh = self.bucket
        return [self.height, self.width, self.crop_top, self.crop_left, bh, bw]


@dataclass
class Dataset:
    items: list[Item]
    hash: str  # see dataset_hash()

    @property
    def buckets(self) -> list[tuple[int, int]]:
        return [it.bucket for it in self.items]


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return im.convert("RGB")
    except Exception as e:  # PIL raises many kinds; all mean "unreadable"
        raise TrainerError("bad_image", f"cannot read image {path.name}: {e}", path=str(path)) from e


def dataset_hash(pairs: list[tuple[bytes, str]]) -> str:
    """sha256 over, for each image in file-name order, sha256(image bytes) then
    sha256(effective caption, UTF-8). Hex digest."""
    h = hashlib.sha256()
    for data, caption in pairs:
        h.update(hashlib.sha256(data).digest())
        h.update(hashlib.sha256(caption.encode("utf-8")).digest())
    return h.hexdigest()


def load_dataset(images_dir: str | Path, trigger_words: list[str], resolution: int) -> Dataset:
    """Finds ``*.png|*.jpg|*.jpeg`` in ``images_dir`` (not recursive, sorted by name), reads each
    one's same-stem ``.txt`` caption or falls back to the first trigger word, and assigns every
    image its bucket. Raises :class:`TrainerError` for a missing/empty folder or an unreadable
    image."""
    root = Path(images_dir)
    if not root.is_dir():
        raise TrainerError("bad_images", f"image folder {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TrainerError("empty_dataset", f"no images (*.png, *.jpg) in {root}")

    buckets = make_buckets(resolution)
    items: list[Item] = []
    pairs: list[tuple[bytes, str]] = []
    for path in files:
        txt = path.with_suffix(".txt")
        if txt.is_file():
            try:
                caption = txt.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise TrainerError("bad_caption", f"cannot read caption {txt.name}: {e}") from e
        else:
            caption = ""
        if not caption:
            if not trigger_words:
                raise TrainerError(
                    "bad_caption",
                    f"{path.name} has no caption and the spec has no trigger word to use instead",
                )
            caption = trigger_words[0]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise TrainerError("bad_image", f"cannot read image {path.name}: {e.strerror or e}") from e
        im = _open(path)
        w, h = im.size
        bucket = pick_bucket(w, h, buckets)
        resized, (left, top) = resize_crop_box(w, h, bucket)
        items.append(Item(path, caption, w, h, bucket, left, top, resized))
        pairs.append((data, caption))
    return Dataset(items, dataset_hash(pairs))


def load_pixels(item: Item) -> np.ndarray:
    """The item's image resized to cover its bucket and center-cropped: float32 CHW in [-1, 1]."""
    im = _open(item.path).resize(item.resized, Image.Resampling.BICUBIC)
    bw, bh = item.bucket
    im = im.crop((item.crop_left, item.crop_top, item.crop_left + bw, item.crop_top + bh))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1).copy()
