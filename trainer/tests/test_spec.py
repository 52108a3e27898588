"""The spec contract and the clear errors for bad input (JSON error line + nonzero exit)."""

import json

import pytest
from conftest import make_spec, run_trainer

from loraforge_trainer.errors import SpecError
from loraforge_trainer.spec import parse_spec


def test_valid_spec_with_defaults(tmp_path):
    s = parse_spec(make_spec(tmp_path))
    assert s.mixed_precision == "auto" and s.cache_latents is True and s.noise_offset == 0.0
    assert s.min_snr_gamma is None and s.gradient_checkpointing is False
    assert s.validation.prompts is None and s.validation.steps == 2
    assert s.validation.scorer is None


def test_fingerprint_ignores_job_id_and_validation(tmp_path):
    a = parse_spec(make_spec(tmp_path))
    b = parse_spec(make_spec(tmp_path, job_id="other", checkpoint_every=7, validation={"steps": 9}))
    c = parse_spec(make_spec(tmp_path, learning_rate=2e-4))
    assert a.training_fingerprint() == b.training_fingerprint() != c.training_fingerprint()


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("rank", 0, "rank"),
        ("rank", "8", "rank"),
        ("alpha", -1, "alpha"),
        ("dropout", 1.5, "dropout"),
        ("target_modules", [], "target_modules"),
        ("optimizer", "sgd", "optimizer"),
        ("lr_scheduler", "cosine", "lr_scheduler"),
        ("resolution", 100, "multiple of 64"),
        ("type", "textual_inversion", "type"),
        ("type", "dreambooth", "class_prompt"),
        ("class_prompt", "a dog", "class_prompt"),
        ("target_modules", ["to_q", "nope"], "target_modules"),
        ("mixed_precision", "fp16", "mixed_precision"),
        ("validation", {"prompts": ["one"]}, "validation.prompts"),
        ("learning_rate", float("inf"), "learning_rate"),
    ],
)
def test_bad_field_is_named(tmp_path, field, value, needle):
    with pytest.raises(SpecError) as e:
        parse_spec(make_spec(tmp_path, **{field: value}))
    assert needle in e.value.reason


def test_missing_field_is_named(tmp_path):
    raw = make_spec(tmp_path)
    del raw["steps"]
    with pytest.raises(SpecError, match="`steps`: is required"):
        parse_spec(raw)


def _expect_error(run, code, exit_code=2):
    assert run.rc == exit_code, run.stdout
    assert run.last["event"] == "error" and run.last["code"] == code, run.last
    assert run.last["exit_code"] == exit_code
    assert run.last["reason"]
    return run.last


def test_cli_bad_spec_json(tmp_path, images):
    err = _expect_error(run_trainer(tmp_path, "{not json", images, tmp_path / "o"), "bad_spec")
    assert "not valid JSON" in err["reason"]


def test_cli_bad_spec_field(tmp_path, images):
    err = _expect_error(run_trainer(tmp_path, make_spec(tmp_path, steps=0), images, tmp_path / "o"), "bad_spec")
    assert err["field"] == "steps"


def test_cli_missing_base_model(tmp_path, images):
    spec = make_spec(tmp_path / "nope")
    err = _expect_error(run_trainer(tmp_path, spec, images, tmp_path / "o"), "missing_model")
    assert "does not exist" in err["reason"]


def test_cli_folder_that_is_not_a_pipeline(tmp_path, images):
    (tmp_path / "m").mkdir()
    err = _expect_error(run_trainer(tmp_path, make_spec(tmp_path / "m"), images, tmp_path / "o"), "missing_model")
    assert "model_index.json" in err["reason"]


def test_cli_empty_image_folder(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    _expect_error(run_trainer(tmp_path, make_spec(tiny_model), tmp_path / "empty", tmp_path / "o"), "empty_dataset")


def test_cli_unreadable_image(tmp_path, tiny_model):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    err = _expect_error(run_trainer(tmp_path, make_spec(tiny_model), d, tmp_path / "o"), "bad_image")
    assert "broken.png" in err["reason"]


def test_cli_missing_scorer_folder(tmp_path, images, tiny_model):
    spec = make_spec(tiny_model, validation={"scorer": str(tmp_path / "no-clip")})
    _expect_error(run_trainer(tmp_path, spec, images, tmp_path / "o"), "missing_scorer")


def test_cli_bad_arguments(tmp_path):
    import io
    from contextlib import redirect_stdout

    from loraforge_trainer import cli

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli.main(["train", "--spec", "x.json"])
    assert rc == 2
    assert json.loads(buf.getvalue().splitlines()[-1])["code"] == "bad_arguments"


def test_cli_hub_id_unavailable_offline(tmp_path, images, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = make_spec(tmp_path, base_model="loraforge-tests/no-such-model")
    err = _expect_error(run_trainer(tmp_path, spec, images, tmp_path / "o"), "model_unavailable")
    assert err["retryable"] is True


def test_a_broken_stderr_does_not_stop_the_trainer():
    # The worker's parent died: every write to the inherited stderr pipe fails.
    import io

    from loraforge_trainer.events import TolerantStream, log

    class Broken(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    import sys

    saved = sys.stderr
    sys.stderr = TolerantStream(Broken())
    try:
        log("this line goes nowhere")
        log("and so does this one")
        sys.stderr.flush()
    finally:
        sys.stderr = saved
