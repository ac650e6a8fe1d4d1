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
