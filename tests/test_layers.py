"""The product's core never loads the drills' package: a production worker or API process runs
without the failpoints, whose handler only the local stack's workers install."""

import json
import subprocess
import sys

from mvpipe.celery_app import app


def test_the_core_never_imports_the_drills_package() -> None:
    # Read here, not at import: the app's configuration is read once, on first use, and the
    # suite's servers set it up only once the session starts.
    core = ["mvpipe.api", "mvpipe.celery_app", "mvpipe.dispatch", *app.conf.include]
    probe = (
        "import importlib, json, sys\n"
        f"for name in {core!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mvpipe.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = json.loads(out)
    assert "mvpipe.pipeline.operation" in loaded  # the probe did load the pipeline
    assert [m for m in loaded if m.startswith("mvpipe.devstack")] == []
