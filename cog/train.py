"""loraforge's trainer as a Cog training model (Replicate's `trainings` API).

One training = one attempt of one LoRA, run exactly as the worker agent runs it
(`crates/worker/src/lib.rs::train`): the dataset's images and captions go into one folder
(`NN.ext` + `NN.txt`), the trainer spec into a JSON file, and then

    python -m loraforge_trainer train --spec SPEC --images DIR --out DIR/train --resume

with stdin closed. The trainer's stdout JSON lines are passed through on stdout as they come
(Replicate keeps them as the training's logs) and written to `events.jsonl`.

Two ways in, one code path (`run_training`):

* Cog (`cog.yaml`: `train: "train.py:train"`): inputs `dataset_url` (a signed GET link to a zip of
  `NN.png|jpg|jpeg|webp` + `NN.txt`, served by the control plane's dataset zip route), `spec`
  (the job's trainer spec as JSON text) and `loraforge_instance` (the attempt's tag, ignored);
  output `TrainingOutput(weights=<weights.tar>)`. A failed training raises, with the last
  `{"event":"error",…}` line as the message.
* CLI, without Cog installed (the fake Replicate of the tests runs this):

      python cog/train.py --dataset-url URL --spec SPEC.json --output weights.tar [--work DIR]

  Exit 0 with the tar written; otherwise the exit status of the failure's outcome code
  (`crates/domain/src/outcome.rs`; the trainer's own status for its errors), and the last stdout
  line is a JSON error line `{"event":"error","code":C,"reason":R,"exit_code":E}`.

`weights.tar` (what a worker would upload, in the worker's layout):

    train/model.safetensors          diffusers/PEFT form
    train/model.kohya.safetensors    kohya form
    train/validation/{0,1,2}.png     when the trainer validated
    events.jsonl                     the trainer's stdout JSON lines
    timing.json                      {"trainer_seconds": <float>}

Environment: LORAFORGE_TRAINER_PYTHON (the Python that runs the trainer; default this one),
LORAFORGE_TRAINER_DIR (the folder holding the `loraforge_trainer` package; default next to this
file, else `../trainer`), LORAFORGE_COG_MAX_DATASET_BYTES (the largest zip accepted, and the most
its entries may hold; default 1 GiB), LORAFORGE_COG_DOWNLOAD_TIMEOUT_S (per network operation,
default 60; the whole download gets 20 times that).

Cog itself is imported only to define the Cog entry: the CLI and the tests need no Cog package.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Exit statuses and codes of `crates/domain/src/outcome.rs` used here (a test checks them against
# the table).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 10
EXIT_UNREACHABLE = 13
OUTCOMES = {
    "bad_job": EXIT_BAD_INPUT,
    "image_download_failed": EXIT_UNREACHABLE,
    "trainer_unavailable": EXIT_INTERNAL,
    "trainer_failed": EXIT_INTERNAL,
    "trainer_killed": EXIT_STOPPED,
    "stopped": EXIT_STOPPED,
    "missing_output": EXIT_INTERNAL,
    "io_error": EXIT_INTERNAL,
}

MAX_DATASET_BYTES_ENV = "LORAFORGE_COG_MAX_DATASET_BYTES"
DEFAULT_MAX_DATASET_BYTES = 1 << 30
DOWNLOAD_TIMEOUT_ENV = "LORAFORGE_COG_DOWNLOAD_TIMEOUT_S"
DEFAULT_DOWNLOAD_TIMEOUT_S = 60.0
# Tries of the download (connection failures, 5xx, 429), with 2 then 4 seconds between them.
DOWNLOAD_TRIES = 3
# The most entries a dataset zip may hold (images and captions); datasets have tens of images.
MAX_ENTRIES = 2000
# A caption is at most 16 Ki characters (domain::text::TextRule::CAPTION), 4 bytes each at most,
# plus the trigger word in front.
MAX_CAPTION_BYTES = 80 * 1024
# The longest trainer stdout line kept, bytes (as the worker: longer lines are cut).
MAX_LINE = 256 * 1024
# The only names a dataset zip may hold: the worker's rule (crates/worker/src/files.rs,
# `is_safe_image_name`) plus the captions beside them.
ENTRY_NAME = re.compile(r"^([0-9]{2,})\.(png|jpg|jpeg|webp|txt)$")
COPY_CHUNK = 1 << 20


class Failure(Exception):
    """The training failed with an outcome code (`OUTCOMES`) or the trainer's own error line."""

    def __init__(self, code: str, reason: str, exit_code: int | None = None, line: str | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.exit_code = OUTCOMES[code] if exit_code is None else exit_code
        # The error line as the trainer wrote it, when it came from the trainer.
        self.line = line
        # Already the last line on stdout (the trainer's, passed through).
        self.printed = False

    def error_line(self) -> str:
        if self.line is not None:
            return self.line
        return json.dumps(
            {"event": "error", "code": self.code, "reason": self.reason, "exit_code": self.exit_code},
            separators=(",", ":"),
        )


def log(message: str) -> None:
    print(f"cog/train.py: {message}", file=sys.stderr, flush=True)


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Failure("bad_job", f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise Failure("bad_job", f"{name} must be positive, got {raw!r}")
    return value


def redact(url: str) -> str:
    """The URL without its query and fragment (signed links carry their signature there)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<not a URL>"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# --- download -----------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The control plane's link answers directly; a redirect is not followed (it could lead
    # anywhere, with the signature in tow).
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def download(url: str, dest: Path, max_bytes: int, timeout_s: float) -> int:
    """Streams `url` into `dest` (at most `max_bytes`); returns the size. Retries transient
    failures. Raises Failure("image_download_failed") or Failure("bad_job")."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise Failure("bad_job", f"the dataset URL must be http(s), got {scheme or 'no'} scheme")
    opener = urllib.request.build_opener(_NoRedirect)
    deadline = time.monotonic() + 20 * timeout_s
    last = ""
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        try:
            return _download_once(opener, url, dest, max_bytes, timeout_s, deadline)
        except _Transient as e:
            last = str(e)
            log(f"downloading the dataset from {redact(url)} failed (try {attempt}/{DOWNLOAD_TRIES}): {last}")
            if attempt < DOWNLOAD_TRIES and time.monotonic() < deadline:
                time.sleep(2**attempt)
    raise Failure(
        "image_download_failed",
        f"could not download the dataset zip from {redact(url)}: {last} ({DOWNLOAD_TRIES} tries)",
    )


class _Transient(Exception):
    pass


def _download_once(opener, url: str, dest: Path, max_bytes: int, timeout_s: float, deadline: float) -> int:
    req = urllib.request.Request(url, headers={"User-Agent": "loraforge-cog"})
    try:
        resp = opener.open(req, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code >= 500 or e.code == 429:
            raise _Transient(f"HTTP {e.code}") from None
        raise Failure(
            "image_download_failed",
            f"the dataset link {redact(url)} answered HTTP {e.code}; it may have expired or been signed for "
            "another job",
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise _Transient(str(getattr(e, "reason", e))) from None
    with resp:
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise Failure(
                "bad_job",
                f"the dataset zip is {declared} bytes, over the limit of {max_bytes} ({MAX_DATASET_BYTES_ENV})",
            )
        size = 0
        try:
            f = open(dest, "wb")
        except OSError as e:
            raise Failure("io_error", f"cannot write {dest}: {e}") from None
        with f:
            while True:
                if time.monotonic() > deadline:
                    raise _Transient("the download took too long")
                try:
                    chunk = resp.read(COPY_CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts are OSErrors too
                    raise _Transient(f"the body broke off: {e}") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise Failure(
                        "bad_job",
                        f"the dataset zip is over the limit of {max_bytes} bytes ({MAX_DATASET_BYTES_ENV})",
                    )
                try:
                    f.write(chunk)
                except OSError as e:
                    raise Failure("io_error", f"cannot write {dest}: {e}") from None
    if declared is not None and declared.isdigit() and int(declared) != size:
        raise _Transient(f"got {size} of {declared} bytes")
    return size


# --- the dataset zip ------------------------------------------------------------------------------


def extract_dataset(zip_path: Path, images: Path, max_bytes: int) -> list[str]:
    """Writes the zip's images and captions into `images` (created, must not exist); returns the
    image names in order. Only `NN.(png|jpg|jpeg|webp)` and `NN.txt` entries at the top level;
    no links, no encryption, no two images with one stem, no caption without its image; at most
    `max_bytes` in all, counted as written. Raises Failure("bad_job")."""

    def bad(reason: str) -> Failure:
        return Failure("bad_job", f"the dataset zip {reason}; the control plane sent an invalid dataset")

    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise bad(f"cannot be read as a zip ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise bad(f"has {len(infos)} entries, more than {MAX_ENTRIES}")
        seen: set[str] = set()
        image_stems: dict[str, str] = {}
        caption_stems: set[str] = set()
        declared = 0
        for info in infos:
            name = info.filename
            m = ENTRY_NAME.match(name)
            if m is None:
                raise bad(f"holds {name!r}, which is not NN.png, NN.jpg, NN.jpeg, NN.webp or NN.txt at the top level")
            if name in seen:
                raise bad(f"holds {name!r} twice")
            seen.add(name)
            mode = (info.external_attr >> 16) & 0o170000
            if mode not in (0, 0o100000):
                raise bad(f"holds {name!r} as a link or special file")
            if info.flag_bits & 0x1:
                raise bad(f"holds {name!r} encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise bad(f"holds {name!r} with an unsupported compression method")
            stem, ext = m.group(1), m.group(2)
            if ext == "txt":
                if info.file_size > MAX_CAPTION_BYTES:
                    raise bad(f"holds the caption {name!r} of {info.file_size} bytes, over {MAX_CAPTION_BYTES}")
                caption_stems.add(stem)
            else:
                if stem in image_stems:
                    raise bad(f"holds two images with the stem {stem!r}")
                image_stems[stem] = name
            declared += info.file_size
            if declared > max_bytes:
                raise bad(f"unpacks to more than {max_bytes} bytes ({MAX_DATASET_BYTES_ENV})")
        if not image_stems:
            raise bad("holds no image")
        orphans = sorted(caption_stems - set(image_stems))
        if orphans:
            raise bad(f"holds the caption {orphans[0]}.txt without an image")
        images.mkdir(parents=True)
        written = 0
        for info in infos:
            target = images / info.filename
            try:
                with zf.open(info) as src, open(target, "xb") as dst:
                    while True:
                        chunk = src.read(COPY_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise bad(f"unpacks to more than {max_bytes} bytes ({MAX_DATASET_BYTES_ENV})")
                        dst.write(chunk)
            except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                raise bad(f"has a broken entry {info.filename!r} ({e})") from None
            except OSError as e:
                raise Failure("io_error", f"cannot write {target}: {e}") from None
    return [image_stems[s] for s in sorted(image_stems)]


# --- the trainer ---------------------------------------------------------------------------------


def trainer_dir() -> Path | None:
    """The folder holding the `loraforge_trainer` package, when it is not installed."""
    explicit = os.environ.get("LORAFORGE_TRAINER_DIR")
    if explicit:
        return Path(explicit)
    for candidate in (HERE, HERE.parent / "trainer"):
        if (candidate / "loraforge_trainer" / "__init__.py").is_file():
            return candidate
    return None


def trainer_command(spec: Path, images: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    python = os.environ.get("LORAFORGE_TRAINER_PYTHON") or sys.executable
    argv = [python, "-m", "loraforge_trainer", "train", "--spec", str(spec), "--images", str(images),
            "--out", str(out), "--resume"]
    env = dict(os.environ)
    tdir = trainer_dir()
    if tdir is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tdir), env.get("PYTHONPATH", "")) if p)
    return argv, env


class TrainerRun:
    def __init__(self, returncode: int, seconds: float, last_error: str | None, error_was_last: bool):
        self.returncode = returncode
        self.seconds = seconds
        # The trainer's last `{"event":"error",…}` line, verbatim.
        self.last_error = last_error
        # Whether that line was the last line passed through (then it need not be repeated).
        self.error_was_last = error_was_last


def run_trainer(argv: list[str], env: dict[str, str], events_path: Path) -> TrainerRun:
    """Runs the trainer to its end: its stdout lines are copied to our stdout as they come and
    its JSON lines appended to `events_path`; stderr is inherited. A SIGTERM or SIGINT to this
    process is passed on as SIGTERM (the trainer checkpoints and exits 10)."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except OSError as e:
        raise Failure(
            "trainer_unavailable",
            f"cannot start the trainer {argv[0]}: {e}; set LORAFORGE_TRAINER_PYTHON to a Python with the "
            "trainer's packages",
        ) from None
    previous = {}

    def forward(signum, frame):
        log(f"got signal {signum}; stopping the trainer (SIGTERM)")
        try:
            proc.send_signal(signal.SIGTERM)
        except OSError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: Cog handles its own signals there
            pass
    last_error = None
    error_was_last = False
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    try:
        with open(events_path, "ab") as events:
            assert proc.stdout is not None
            while True:
                line = proc.stdout.readline(MAX_LINE)
                if not line:
                    break
                if not line.endswith(b"\n"):
                    # A line longer than MAX_LINE: keep its start, drop the rest.
                    while True:
                        rest = proc.stdout.readline(MAX_LINE)
                        if not rest or rest.endswith(b"\n"):
                            break
                    line += b"\n"
                if out is not None:
                    out.write(line)
                    out.flush()
                else:
                    sys.stdout.write(line.decode("utf-8", "replace"))
                    sys.stdout.flush()
                error_was_last = False
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(value, dict):
                    continue
                events.write(line)
                events.flush()
                if value.get("event") == "error":
                    last_error = line.decode("utf-8", "replace").strip()
                    error_was_last = True
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return TrainerRun(returncode, time.monotonic() - started, last_error, error_was_last)


def judge(run: TrainerRun) -> None:
    """Raises the Failure a trainer run ended with (the worker's rules, `lib.rs::trained`)."""
    code = run.returncode
    if code == EXIT_OK:
        return
    if code < 0:
        raise Failure(
            "trainer_killed",
            f"the trainer was killed by signal {-code}; a later attempt starts again (if this repeats, check the "
            "host's memory)",
        )
    if code == EXIT_STOPPED:
        raise Failure("stopped", "the trainer stopped on request or a signal before finishing")
    if 1 <= code <= 5:
        if run.last_error is not None:
            try:
                said = json.loads(run.last_error)
            except ValueError:
                said = {}
            code_name = said.get("code") if isinstance(said.get("code"), str) else "trainer_failed"
            failure = Failure(code_name, str(said.get("reason") or ""), exit_code=code, line=run.last_error)
            failure.printed = run.error_was_last
            raise failure
        raise Failure(
            "trainer_failed",
            f"the trainer exited with code {code} without an error line; its log (stderr) says why",
            exit_code=code,
        )
    raise Failure("trainer_failed", f"the trainer exited with code {code}, which it does not use")


# --- the weights tar -------------------------------------------------------------------------------


def write_weights(train: Path, events: Path, seconds: float, output: Path, scratch: Path) -> None:
    """Writes `output` (atomically: a temporary file beside it, then a rename)."""
    model = train / "model.safetensors"
    kohya = train / "model.kohya.safetensors"
    for f in (model, kohya):
        if not f.is_file():
            raise Failure("missing_output", f"the trainer exited 0 but wrote no {f.name}; its log (stderr) may say why")
    timing = scratch / "timing.json"
    timing.write_text(json.dumps({"trainer_seconds": seconds}))
    members = [(model, "train/model.safetensors"), (kohya, "train/model.kohya.safetensors")]
    for i in range(3):
        v = train / "validation" / f"{i}.png"
        if v.is_file():
            members.append((v, f"train/validation/{i}.png"))
    members += [(events, "events.jsonl"), (timing, "timing.json")]
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for path, arcname in members:
                info = tar.gettarinfo(str(path), arcname=arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise Failure("io_error", f"cannot write {output}: {e}") from None


# --- one training ---------------------------------------------------------------------------------


def run_training(dataset_url: str, spec: object, output: Path, work: Path | None = None) -> None:
    """The whole training: download and unpack the dataset, run the trainer, write the tar.
    Raises Failure. `work` (default a temporary folder) is removed afterwards when it was made
    here; a given one keeps the trainer's folder."""
    if not isinstance(spec, dict):
        raise Failure("bad_job", "the trainer spec is not a JSON object; the control plane sent an invalid job")
    max_bytes = int(_env_number(MAX_DATASET_BYTES_ENV, DEFAULT_MAX_DATASET_BYTES))
    timeout_s = _env_number(DOWNLOAD_TIMEOUT_ENV, DEFAULT_DOWNLOAD_TIMEOUT_S)
    owned = work is None
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="loraforge-cog-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        images = work / "images"
        train = work / "train"
        spec_path = work / "trainer-spec.json"
        events = work / "events.jsonl"
        zip_path = work / "dataset.zip"
        if images.exists():
            shutil.rmtree(images)
        events.unlink(missing_ok=True)
        size = download(dataset_url, zip_path, max_bytes, timeout_s)
        names = extract_dataset(zip_path, images, max_bytes)
        zip_path.unlink(missing_ok=True)
        log(f"dataset: {len(names)} images ({size} bytes zipped)")
        spec_path.write_text(json.dumps(spec, indent=2))
        argv, env = trainer_command(spec_path, images, train)
        run = run_trainer(argv, env, events)
        judge(run)
        write_weights(train, events, run.seconds, output, work)
    except OSError as e:
        raise Failure("io_error", f"{e}") from None
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cog/train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset-url", required=True, help="signed GET link to a zip of NN.png + NN.txt")
    p.add_argument("--spec", required=True, help="the trainer spec, a JSON file")
    p.add_argument("--output", required=True, help="where weights.tar goes")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed afterwards)")
    args = p.parse_args(argv)
    try:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except OSError as e:
            raise Failure("bad_job", f"cannot read the spec {args.spec}: {e}") from None
        except ValueError as e:
            raise Failure("bad_job", f"the spec {args.spec} is not JSON: {e}") from None
        run_training(args.dataset_url, spec, Path(args.output), Path(args.work) if args.work else None)
    except Failure as f:
        log(f"failed: {f.code}: {f.reason}")
        if not f.printed:
            sys.stdout.write(f.error_line() + "\n")
            sys.stdout.flush()
        return f.exit_code
    return EXIT_OK


# --- the Cog entry ---------------------------------------------------------------------------------

try:  # Cog is there only in the image Cog builds.
    import cog as _cog
except ImportError:
    _cog = None

if _cog is not None:

    class TrainingOutput(_cog.BaseModel):
        weights: _cog.Path

    def train(
        dataset_url: str = _cog.Input(
            description="Signed GET link to a zip of the dataset: NN.png|jpg|jpeg|webp images with NN.txt captions"
        ),
        spec: str = _cog.Input(description="The trainer spec (JSON object), as loraforge's worker gets it"),
        loraforge_instance: str = _cog.Input(
            default="",
            description="loraforge's name for this attempt; only a tag the control plane finds the training by "
            "(a create whose answer was lost is not made twice). Ignored by the training.",
        ),
    ) -> TrainingOutput:
        # `loraforge_instance` (crates/replicate's INSTANCE_TAG) is declared so that a Cog that
        # refuses undeclared inputs takes the create, and so that it stays in the training's
        # `input`; it changes nothing here.
        del loraforge_instance
        try:
            parsed = json.loads(spec)
        except ValueError as e:
            failure = Failure("bad_job", f"the spec input is not JSON: {e}")
            print(failure.error_line(), flush=True)
            raise RuntimeError(failure.error_line()) from None
        output = Path(tempfile.mkdtemp(prefix="loraforge-weights-")) / "weights.tar"
        try:
            run_training(dataset_url, parsed, output)
        except Failure as f:
            if not f.printed:
                print(f.error_line(), flush=True)
            raise RuntimeError(f.error_line()) from None
        return TrainingOutput(weights=_cog.Path(output))


if __name__ == "__main__":
    sys.exit(main())
