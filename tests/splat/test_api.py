"""The package's Python API, as the README shows it: ``splat.default_config``, ``splat.train``,
``splat.load_model`` from a bare ``import splat``, in any order, any number of times."""

from __future__ import annotations

import subprocess
import sys

from tests.splat.helpers import DEMO

# Run in a fresh interpreter: the bug this guards against depends on what has been imported before.
SCRIPT = """
import sys
import splat
assert "torch" not in sys.modules, "import splat must stay light"
cfg = splat.default_config(sys.argv[1])          # imports the trainer's package first
import splat.training.metrics                    # and more of it
for _ in range(2):                               # a second call as well
    assert callable(splat.train), type(splat.train)
from splat.training.trainer import train
assert splat.train is train
assert callable(splat.load_model) and callable(splat.rasterize) and splat.Trainer.__name__ == "Trainer"
print("ok")
"""


def test_api_names_stay_what_the_readme_says_after_any_import():
    # mutation: naming the trainer's folder splat/train again makes splat.train that package after the first
    # import of it (a module: "TypeError: 'module' object is not callable")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(DEMO)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
