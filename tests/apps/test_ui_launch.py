"""Launching the UI: --auth is enforced, and serving beyond localhost without it warns."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from apps.ui import _is_local, _parse_auth, launch, main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                         ("0.0.0.0", False), ("", False), ("192.168.1.5", False)])
def test_which_hosts_are_local(host, local):
    assert _is_local(host) is local


def test_auth_flag_is_checked(capsys):
    assert _parse_auth("alice:s3:cret") == ("alice", "s3:cret")
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(ValueError, match="USER:PASSWORD"):
            _parse_auth(bad)
    with pytest.raises(SystemExit) as e:
        main(["--auth", "nopassword"])
    assert e.value.code == 2 and "USER:PASSWORD" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--device", "banana"])
    assert e.value.code == 2 and "banana" in capsys.readouterr().err


def test_served_beyond_localhost_warns_and_auth_is_required(sd1, capsys):
    # the session's loaded tiny pipeline (launch takes a pipeline as well as a path): what is checked here is
    # the serving, not the loading, which tests/apps/test_ui_browser.py goes through
    port = free_port()
    app = launch(sd1, host="0.0.0.0", port=port, device="cpu", block=False)
    try:
        err = capsys.readouterr().err
        assert "without a password" in err and "--auth" in err
        assert "share=True" not in err  # Gradio's own hint is replaced by our --share wording
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            assert r.status == 200  # open without --auth
    finally:
        app.close()
    port = free_port()
    app = launch(sd1, port=port, device="cpu", auth=("alice", "pw"), block=False)
    try:
        assert "without a password" not in capsys.readouterr().err
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30)
        assert e.value.code == 401
    finally:
        app.close()


# What the process below runs: the real ``editkit-ui`` entry point (its flags, launch and serving), with the
# editing app replaced by an empty page that has the app's per-session state and one browser session's download
# folder, made at start (as a session's first download makes it) and its path printed. What is checked is how the
# server stops, not the model (loading it took 8 of the 11 s this test would cost).
SERVE_UNTIL_SIGTERM = """
import sys
import gradio as gr
import apps.ui as ui

def an_app_with_a_session(model, **kw):
    with gr.Blocks() as app:
        gr.Markdown("editkit")
    app.editkit_sessions = ui.Sessions()
    print(app.editkit_sessions.folder("a-session"), flush=True)
    return app

ui.build_app = an_app_with_a_session
sys.exit(ui.main(sys.argv[1:]))
"""


def test_sigterm_stops_the_server_and_removes_the_download_folders():
    """``docker stop`` / systemd send SIGTERM: the UI closes and removes its sessions' folders. Started with
    SIGINT ignored, as a shell script's background job is. Mutation caught: serving with Gradio's
    ``block_thread`` alone (SIGTERM's default action ends the process, the folder stays behind, exit -15)."""
    import select
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_UNTIL_SIGTERM, "--model", "never/loaded", "--device", "cpu",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        folder = Path(proc.stdout.readline().strip())
        assert folder.is_dir(), proc.communicate(timeout=60)
        deadline, line = time.monotonic() + 120, ""
        while "serving on" not in line:
            ready, _, _ = select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))
            assert ready and proc.poll() is None, "editkit-ui did not start"
            line = proc.stderr.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err[-3000:])
    assert not folder.exists()
