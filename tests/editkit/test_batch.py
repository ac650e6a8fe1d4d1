"""Batch editing (editkit.batch): photos split across processes by accelerate, a summary, bad photos recorded.

The two-process run is started the way a user starts it, ``accelerate launch ... editkit.cli edit``, on the
CPU (gloo), and compared file by file, byte by byte, with a plain one-process ``editkit edit`` of the same
photos. Both runs use one thread per process: CPU matrix products are not bit-identical across thread counts.
The same two processes then run a second batch whose engine is faked (out of memory on one process's model
load): one launch of two processes for both (:data:`WORKER`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import editkit.batch as batch
from editkit.batch import EditJob, _process_device, check_photo_names, launched
from editkit.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from editkit.jobs import InputError
from tests.helpers import one_torch_thread

REPO = Path(__file__).resolve().parents[2]
RUN = ["--inversion", "direct", "--steps", "2", "--quiet"]
PAIRS = "a cat on a table\ta dog on a table\na cat on a table\ta lion on a table\n"


@pytest.fixture(scope="module")
def model(tiny_model_dirs) -> str:
    return str(tiny_model_dirs["sd1"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Four different photos, a file that is not an image and a pairs file with two prompt pairs."""
    folder = tmp_path_factory.mktemp("photos")
    y, x = np.mgrid[0:48, 0:64]
    out = {}
    for i in range(4):
        rgb = np.stack([(x * (4 + i)) % 256, (y * 5 + 40 * i) % 256, (x + y) * 2], axis=-1).astype(np.uint8)
        out[f"photo{i}"] = folder / f"photo {i}.png"
        Image.fromarray(rgb).save(out[f"photo{i}"])
    out["bad"] = folder / "notes.png"
    out["bad"].write_text("not an image\n")
    out["pairs"] = folder / "pairs.tsv"
    out["pairs"].write_text(PAIRS)
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def batch_run(model, photos, tmp_path_factory):
    """One in-process batch (--summary): good, missing, not an image, good."""
    out = tmp_path_factory.mktemp("batch") / "out"
    images = [photos["photo0"], out.parent / "missing.png", photos["bad"], photos["photo1"]]
    argv = [
        "edit",
        *map(str, images),
        "--model",
        model,
        "--pairs",
        str(photos["pairs"]),
        "--output",
        str(out),
        "--summary",
        str(out / "summary.json"),
        *[a for a in RUN if a != "--quiet"],
    ]  # the table is on stderr
    stdout, stderr = io.StringIO(), io.StringIO()
    with one_torch_thread(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return {
        "code": code,
        "out": out,
        "images": images,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
    }


def accelerate_launch(processes: int = 2) -> list[str]:
    """``accelerate launch`` on the CPU (gloo), as a user starts a batch; the script or ``-m module`` follows."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


@pytest.fixture(scope="module")
def launch(model, photos, tmp_path_factory):
    """One ``accelerate launch`` of two processes (:data:`WORKER`): the real ``editkit edit`` of four photos and
    a bad one, then the batch whose second process runs out of memory loading the model."""
    tmp = tmp_path_factory.mktemp("launch")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    good = [photos[f"photo{i}"] for i in range(4)]
    # the photos are dealt out in turn, [0, 2, 4] and [1, 3]: the bad photo is in the second process's share
    inputs = [*good[:3], photos["bad"], good[3]]
    out = tmp / "two"
    cli = ["edit", *map(str, inputs), "--output", str(out), "--model", model, "--pairs", str(photos["pairs"]),
           "--device", "cpu", *RUN]  # fmt: skip
    (tmp / "oom").mkdir()
    oom = [str(tmp / "oom" / "out"), *map(str, good)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [*accelerate_launch(2), str(script), json.dumps({"cli": cli, "oom": oom})],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    return {"proc": proc, "out": out, "inputs": inputs, "good": good, "tmp": tmp}


def test_two_processes_write_the_same_files_as_one(model, photos, launch, tmp_path):
    good = launch["good"]
    common = ["--model", model, "--pairs", str(photos["pairs"]), "--device", "cpu", *RUN]

    one = tmp_path / "one"  # the plain single-process command, as it ran before batch mode existed
    with one_torch_thread():
        assert main(["edit", *map(str, good), "--output", str(one), *common]) == EXIT_OK
    reference = files(one)
    assert len(reference) == 4 * 3  # per photo: the source, one edit per pair

    two, inputs, proc = launch["out"], launch["inputs"], launch["proc"]
    # a photo failed: every process exits 4, which the launcher reports as a failure of the job
    assert proc.returncode != 0, proc.stderr
    assert re.search(r"exitcode\s*:\s*4 ", proc.stderr), proc.stderr  # the launcher names the exit code
    assert (
        "internal error" not in proc.stderr and str(REPO / "editkit") not in proc.stderr
    )  # no editkit traceback

    assert files(two) == reference  # same names, same bytes
    printed = proc.stdout.split()
    assert sorted(printed) == sorted(
        str(two / name) for name in reference
    )  # each written once, by one process

    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["edited"] == 4 and summary["failed"] == 1
    assert [r["image"] for r in summary["inputs"]] == [str(p) for p in inputs]
    assert [r["process"] for r in summary["inputs"]] == [0, 1, 0, 1, 0]
    bad = summary["inputs"][3]
    assert (
        not bad["ok"]
        and "notes.png" in bad["error"]
        and "not an image" in bad["error"]
        and bad["files"] == []
    )
    for record, photo in zip(summary["inputs"][:3] + summary["inputs"][4:], good, strict=True):
        stem = photo.stem.replace(" ", "_")
        assert record["ok"] and sorted(record["files"]) == sorted(
            n for n in reference if n.startswith(stem + "_")
        )


def test_a_bad_photo_does_not_stop_the_others(batch_run):
    assert batch_run["code"] == EXIT_SOME_FAILED
    out = batch_run["out"]
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(
        f"photo_{i}_{tag}"
        for i in (0, 1)
        for tag in ("000_source.png", "000_edit0_a_dog_on_a_table.png", "001_edit0_a_lion_on_a_table.png")
    )
    assert sorted(batch_run["stdout"].split()) == sorted(str(out / n) for n in names)
    table = batch_run["stderr"][batch_run["stderr"].index("summary: ") :].splitlines()
    assert table[0].startswith("summary: 2 of 4 photo(s) edited, 2 failed")
    assert [line.split()[0] for line in table[1:]] == ["ok", "FAILED", "FAILED", "ok"]
    assert "Traceback" not in batch_run["stderr"]


def test_the_summary_lists_every_photo_with_its_files_or_its_error(batch_run):
    out = batch_run["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["output"] == str(out) and summary["method"] == "p2p" and summary["seed"] == 0
    assert summary["processes"] == 1 and summary["edited"] == 2 and summary["failed"] == 2
    records = summary["inputs"]
    assert [r["image"] for r in records] == [str(p) for p in batch_run["images"]]
    assert [r["ok"] for r in records] == [True, False, False, True]
    assert "no such image file" in records[1]["error"] and "missing.png" in records[1]["error"]
    assert "not an image" in records[2]["error"]
    listed = [name for r in records for name in r["files"]]
    assert sorted(listed) == sorted(p.name for p in out.glob("*.png"))  # every file listed, once
    assert records[0]["files"][0] == "photo_0_000_source.png"  # in the order written
    assert all(r["error"] is None and r["files"] for r in records if r["ok"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_plain_edit_still_stops_on_a_bad_photo_before_loading(model, photos, tmp_path, capsys, monkeypatch):
    import editkit

    def loader(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(editkit, "load_pipeline", loader)
    out = tmp_path / "out"
    code = main(
        [
            "edit",
            str(photos["photo0"]),
            str(photos["bad"]),
            "--model",
            model,
            "--source",
            "a cat",
            "--target",
            "a dog",
            "--output",
            str(out),
            *RUN,
        ]
    )
    assert code == EXIT_USAGE and "not an image" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_photos_that_would_write_the_same_files_are_refused(photos, tmp_path, capsys):
    twin = tmp_path / "photo 0.jpg"  # same stem as photos["photo0"]: its files would overwrite
    Image.open(photos["photo0"]).save(twin)
    with pytest.raises(InputError, match="would write the same files"):
        check_photo_names([photos["photo0"], twin])
    code = main(
        [
            "edit",
            str(photos["photo0"]),
            str(twin),
            "--source",
            "a cat",
            "--target",
            "a dog",
            "--model",
            "/nonexistent",
            "--summary",
            str(tmp_path / "s.json"),
            *RUN,
        ]
    )
    assert code == EXIT_USAGE and "rename one" in capsys.readouterr().err


def test_a_photo_given_twice_is_refused(photos, tmp_path, monkeypatch, capsys):
    same = photos["photo0"]
    with pytest.raises(InputError, match="given twice: give each photo once"):
        check_photo_names([same, photos["photo1"], same])
    monkeypatch.chdir(same.parent)  # the same file under another spelling
    with pytest.raises(InputError, match=r"photo 0.png is given twice \(as .*photo 0.png\)"):
        check_photo_names([same, Path(".") / "sub" / ".." / same.name])
    out = tmp_path / "out"
    argv = [
        "edit",
        str(same),
        str(same),
        "--source",
        "a cat",
        "--target",
        "a dog",
        "--model",
        "/nonexistent",
        "--output",
        str(out),
        *RUN,
    ]
    for extra in ([], ["--summary", str(tmp_path / "s.json")]):  # plain and batch mode
        assert main([*argv, *extra]) == EXIT_USAGE and "given twice" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_names_that_differ_only_in_case_are_refused(photos, tmp_path):
    upper = tmp_path / "PHOTO 0.png"  # its files are photo 0's on macOS and Windows file systems
    Image.open(photos["photo0"]).save(upper)
    with pytest.raises(InputError, match="would write the same files .* case-insensitive file system"):
        check_photo_names([photos["photo0"], upper])
    check_photo_names([photos["photo0"], photos["photo1"]])  # different names pass


def test_each_process_takes_its_own_device():
    class State:
        num_processes = 2
        device = torch.device("cuda", 1)

    assert _process_device(State(), None) == "cuda:1"
    assert _process_device(State(), "cuda") == "cuda:1"
    assert _process_device(State(), "cpu") == "cpu"
    with pytest.raises(InputError, match="leave --device out"):
        _process_device(State(), "cuda:0")
    State.num_processes = 1
    assert _process_device(State(), None) is None and _process_device(State(), "cuda:0") == "cuda:0"


def test_batch_mode_is_on_under_a_launcher(monkeypatch):
    for name in (
        "WORLD_SIZE",
        "PMI_SIZE",
        "OMPI_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_SIZE",
        "ACCELERATE_DYNAMO_BACKEND",
    ):
        monkeypatch.delenv(name, raising=False)
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched()


def test_generate_refuses_to_run_in_several_processes(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (
        main(["generate", "--source", "a cat", "--target", "a dog", "--model", "/nonexistent"]) == EXIT_USAGE
    )
    assert "without accelerate launch" in capsys.readouterr().err


def test_job_checks_prompts_without_a_model():
    with pytest.raises(InputError, match="same number of words"):
        EditJob(pairs=[("a cat", ["a big dog"])]).check()
    with pytest.raises(InputError, match="'p2p' or 'pnp'"):
        EditJob(pairs=[("a cat", ["a dog"])], method="sdedit").check()


# That `import editkit` (editkit.batch, the command line) does not import accelerate is checked in a fresh process
# by tests/editkit/test_cli_bad_inputs.py::test_bad_input_in_a_real_process.


def fake_edit(refuse: str, crash: str = ""):
    """Stands in for the engine: a grey image per prompt; refuses one photo, crashes on another."""
    from editkit.jobs import Outcome

    def edit(pipe, image, source, targets, settings, **kw):
        if Path(image).name == refuse:
            raise ValueError(f"the engine refused {Path(image).name}")
        if Path(image).name == crash:
            raise RuntimeError("a bug")
        grey = Image.new("RGB", (8, 8), (128, 128, 128))
        return Outcome(grey, [grey for _ in targets])

    return edit


def test_a_photo_the_engine_refuses_is_recorded_and_a_bug_is_not_hidden(photos, tmp_path, monkeypatch):
    job = EditJob(pairs=[("a cat", ["a dog"])], inversion="direct", steps=2)
    images = [photos["photo0"], photos["photo1"], photos["photo2"]]
    monkeypatch.setattr(batch, "edit_photo_p2p", fake_edit(refuse="photo 1.png"))
    said = []
    summary = batch.edit_photos(
        images, job, model="m", output=tmp_path / "out", load=lambda m, d: object(), say=said.append
    )
    assert [r.ok for r in summary.inputs] == [True, False, True] and summary.exit_code == EXIT_SOME_FAILED
    assert summary.inputs[1].error == "the engine refused photo 1.png" and summary.inputs[1].files == []
    assert summary.inputs[2].files == ["photo_2_source.png", "photo_2_edit0_a_dog.png"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failed"] == 1
    assert said[-1].splitlines()[2].split()[0] == "FAILED"

    monkeypatch.setattr(batch, "edit_photo_p2p", fake_edit(refuse="", crash="photo 1.png"))
    with pytest.raises(RuntimeError, match="a bug"):  # an engine bug is not turned into a photo's error
        batch.edit_photos(images, job, model="m", output=tmp_path / "out2", load=lambda m, d: object())
    # ... but the summary of what was written comes first
    records = json.loads((tmp_path / "out2" / "summary.json").read_text())["inputs"]
    assert [r["ok"] for r in records] == [True, False, False] and records[0]["files"]
    assert records[1]["error"] == "RuntimeError: a bug"
    assert records[2]["error"] == f"not edited: stopped by RuntimeError: a bug on {images[1]}"


def test_a_model_that_fails_to_load_for_lack_of_memory_is_recorded(photos, tmp_path):
    def load(model, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    job = EditJob(pairs=[("a cat", ["a dog"])], inversion="direct", steps=2)
    summary = batch.edit_photos(
        [photos["photo0"], photos["photo1"]], job, model="m", output=tmp_path, load=load
    )
    assert summary.exit_code == EXIT_SOME_FAILED and [r.ok for r in summary.inputs] == [False, False]
    assert summary.inputs[1].error == (
        "not edited: the model could not be loaded: OutOfMemoryError: CUDA out of "
        "memory. Tried to allocate 2.00 GiB"
    )
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == 2


# One process of the module's two-process launch (``accelerate launch worker.py JSON``):
# 1. the real command line, run as ``python -m editkit.cli ARGS`` runs it (runpy, as __main__); its exit code
#    becomes the process's;
# 2. the timeout of the process group the command line set up;
# 3. a batch with a fake engine (a grey image per prompt): the main process's model load takes a second, and
#    the second process runs out of memory loading it.
WORKER = """
import json, os, runpy, sys, time
from pathlib import Path

args = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])

sys.argv = ["editkit", *args["cli"]]
try:
    runpy.run_module("editkit.cli", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
sys.stdout.flush()

import torch
from PIL import Image

import editkit.batch as batch
from editkit.jobs import Outcome

out, photos = Path(args["oom"][0]), args["oom"][1:]
marker = out.parent / "main-loaded"
group = torch.distributed.distributed_c10d._get_default_group()
timeout = group._get_backend(torch.device("cpu")).options._timeout
(out.parent / f"timeout-{rank}").write_text(str(timeout.total_seconds()))


def load(model, device):
    if rank == 0:
        time.sleep(1.0)
        marker.write_text("")
        return object()
    (out.parent / "second-saw").write_text(json.dumps(marker.exists()))
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def edit(pipe, image, source, targets, settings, **kw):
    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    return Outcome(grey, [grey for _ in targets])


batch.edit_photo_p2p = edit
job = batch.EditJob(pairs=[("a cat", ["a dog"])], inversion="direct", steps=2, progress=False)
summary = batch.edit_photos(photos, job, model="m", output=out, device="cpu", load=load)
(out.parent / f"exit-{rank}").write_text(str(summary.exit_code))
sys.exit(code)
"""


def test_a_process_out_of_memory_on_the_model_still_leaves_the_summary(launch):
    """Also: the photos are dealt out in turn, the main process loads the model before the others, and the
    processes wait for each other far longer than the process group's default (the job was killed)."""
    tmp = launch["tmp"] / "oom"
    out = tmp / "out"
    for rank in (0, 1):  # photos failed; no crash
        assert (tmp / f"exit-{rank}").read_text() == "4", launch["proc"].stderr
    summary = json.loads((out / "summary.json").read_text())
    records = summary["inputs"]
    assert [r["process"] for r in records] == [0, 1, 0, 1]  # dealt out in turn
    assert [r["ok"] for r in records] == [True, False, True, False]
    for record in records[1::2]:
        assert (
            record["error"].startswith(
                "not edited: the model could not be loaded on process 2 of 2: "
                "OutOfMemoryError: CUDA out of memory"
            )
            and record["files"] == []
        )
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"photo_{i}_{tag}.png" for i in (0, 2) for tag in ("source", "edit0_a_dog")
    )
    assert json.loads((tmp / "second-saw").read_text()) is True  # the main process had loaded first
    # the process group the command line set up (the batch above used it too)
    for rank in (0, 1):
        assert float((tmp / f"timeout-{rank}").read_text()) == batch.WAIT_LIMIT.total_seconds() >= 3600


def test_processes_wait_for_each_other_for_hours(monkeypatch):
    import accelerate

    made = {}

    class State:
        def __init__(self, cpu=False, **kwargs):
            made.update(kwargs, cpu=cpu)

    monkeypatch.setattr(accelerate, "PartialState", State)
    batch._state("cpu")
    assert made["cpu"] is True and made["timeout"] == batch.WAIT_LIMIT >= timedelta(hours=1)


def test_photos_are_dealt_out_in_turn():
    photos = list(range(7))
    assert [batch.share_of(photos, rank, 3) for rank in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert batch.share_of(photos, 0, 1) == photos and batch.share_of([0], 1, 2) == []
