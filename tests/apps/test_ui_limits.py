"""Limits of the editing UI: a --model path that is not there is refused at start, uploads have a size limit."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid

import pytest

import apps.ui as ui


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def launched(monkeypatch) -> list:
    """Stands in for ui.launch: records its arguments instead of loading a model and serving."""
    calls = []
    monkeypatch.setattr(ui, "launch", lambda model, **kw: calls.append((model, kw)))
    return calls


@pytest.mark.parametrize("name", ["{tmp}/no-model", "./no-model", "../no-model", "~/no-model-here",
                                  "models/sd15/v1", "no-model.safetensors", "C:\\models\\sd15"])
def test_a_model_path_that_does_not_exist_is_refused_at_start(name, tmp_path, monkeypatch, launched, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    name = name.format(tmp=tmp_path)
    assert ui.main(["--model", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"editkit-ui: error: --model {name}: no file or folder")
    assert launched == []  # nothing loaded, nothing served


def test_hub_ids_and_existing_paths_still_start(tmp_path, monkeypatch, launched):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sd15").mkdir(parents=True)
    for name in ["stable-diffusion-v1-5/stable-diffusion-v1-5", "gpt2", "./models/sd15", "models/sd15",
                 str(tmp_path / "models" / "sd15")]:
        assert ui.main(["--model", name]) == 0
    assert [model for model, _ in launched] == ["stable-diffusion-v1-5/stable-diffusion-v1-5", "gpt2",
                                                "./models/sd15", "models/sd15", str(tmp_path / "models" / "sd15")]


def test_the_upload_limit_has_a_default_and_an_option(launched, capsys):
    assert ui.main(["--model", "org/name"]) == 0 and launched[-1][1]["max_upload_mb"] == ui.MAX_UPLOAD_MB
    assert 20 <= ui.MAX_UPLOAD_MB <= 200  # a photo at the pixel limit as JPEG fits; a 300 MB file does not
    assert ui.main(["--model", "org/name", "--max-upload-mb", "7"]) == 0 and launched[-1][1]["max_upload_mb"] == 7
    with pytest.raises(SystemExit) as e:
        ui.main(["--model", "org/name", "--max-upload-mb", "0"])
    assert e.value.code == 2 and "--max-upload-mb must be at least 1" in capsys.readouterr().err


def upload(port: int, size: int) -> tuple[int, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_an_upload_over_the_limit_is_refused_before_it_is_read(tmp_path):
    port = free_port()
    # a model that is not there: the app starts with the error on the page, and serves uploads (no model load)
    app = ui.launch(str(tmp_path / "no-model"), port=port, device="cpu", block=False, max_upload_mb=1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            assert json.loads(r.read())["max_file_size"] == 1024 * 1024  # the page refuses it before sending
        code, text = upload(port, 2 * 1024 * 1024)
        assert code == 413 and "exceeded maximum allowed size of 1048576 bytes" in text
        code, text = upload(port, 512 * 1024)
        assert code == 200 and text.count("big.png") == 1  # under the limit: accepted
    finally:
        app.close()
