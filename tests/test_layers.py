"""The layers flow one way, checked on every module's imports.

errors/models/states (and the other pure modules) <- settings <- store/, providers/, media/ <- the
context's wiring <- pipeline/ <- Celery's plumbing <- tasks/ <- api <- the local stack <- cli.

A static walk of every `import` in the package (at module level, in functions, under
`TYPE_CHECKING`, and `importlib.import_module` / `__import__` of a literal name) against that
order, and the API's reach (the pipeline's, never media's nor the store's); and, at run time,
the product's core never loads the drills' package (a production worker or API process runs
without the failpoints, whose handler only the local stack's workers install).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mvpipe
from mvpipe.celery_app import TASK_MODULES

#: The layers, lowest first, each by the modules (and packages) that form it. A module may
#: import the package's modules of its own layer and of the layers below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "pure",
        (
            "mvpipe",
            "mvpipe.errors",
            "mvpipe.models",
            "mvpipe.states",
            "mvpipe.pricing",
            "mvpipe.provider_names",
            "mvpipe.durations",
            "mvpipe.frame_size",
            "mvpipe.hooks",
            "mvpipe.queues",
        ),
    ),
    ("settings", ("mvpipe.settings",)),
    ("io", ("mvpipe.store", "mvpipe.providers", "mvpipe.media")),
    ("wiring", ("mvpipe.deps",)),
    ("pipeline", ("mvpipe.pipeline",)),
    ("celery", ("mvpipe.celery_app", "mvpipe.messaging")),
    ("tasks", ("mvpipe.tasks",)),
    ("api", ("mvpipe.api",)),
    ("devstack", ("mvpipe.devstack",)),
    ("cli", ("mvpipe.cli",)),
]

#: Third-party packages a layer never imports: the pure modules and settings do no I/O, below
#: the tasks nothing knows Celery (the pipeline enqueues through its `Dispatcher`), and the
#: pipeline reaches DynamoDB and S3 only through the store (Redis it uses itself: its locks).
_IO_CLIENTS = ("celery", "kombu", "boto3", "botocore", "redis", "pynamodb")
FORBIDDEN_PACKAGES: dict[str, tuple[str, ...]] = {
    "pure": _IO_CLIENTS,
    "settings": _IO_CLIENTS,
    "io": ("celery", "kombu"),
    "wiring": ("celery", "kombu"),
    "pipeline": ("celery", "kombu", "boto3", "botocore", "pynamodb"),
}

#: Calls that import the module their first argument names.
_IMPORT_CALLS = ("import_module", "__import__")

#: Within the I/O layer: media is pure media work (no store, no provider), and the store knows
#: no provider nor media.
FORBIDDEN_SIBLINGS: dict[str, tuple[str, ...]] = {
    "mvpipe.media": ("mvpipe.store", "mvpipe.providers"),
    "mvpipe.store": ("mvpipe.providers", "mvpipe.media"),
}

#: The API validates and calls the pipeline, as thin as the tasks: it reads no song and writes
#: no file (the media work, and where a download goes, are the pipeline's), and hands out
#: views, never the store's records.
THROUGH_THE_PIPELINE: dict[str, tuple[str, ...]] = {
    "mvpipe.api": ("mvpipe.media", "mvpipe.store"),
}


@dataclass(frozen=True)
class Violation:
    module: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.module} imports {self.imported}: {self.rule}"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest prefix naming `module`."""
    best: tuple[int, int] | None = None
    for index, (_, members) in enumerate(LAYERS):
        for prefix in members:
            if _within(module, prefix) and (best is None or len(prefix) > best[1]):
                if prefix == "mvpipe" and module != "mvpipe":
                    continue  # the package's own __init__, not every module under it
                best = (index, len(prefix))
    return None if best is None else best[0]


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules `module` imports anywhere in its source, relative imports resolved; `from
    package import name` counts as `package.name` when that is a module."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                if not is_package:
                    parts.pop()
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        elif isinstance(node, ast.Call) and _imported_by_call(node):
            found.add(_imported_by_call(node))
    return found


def _imported_by_call(node: ast.Call) -> str:
    """The absolute module name a literal `importlib.import_module(...)` / `__import__(...)`
    imports, or ""."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name not in _IMPORT_CALLS or not node.args:
        return ""
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value if not first.value.startswith(".") else ""
    return ""


def violations(root: Path) -> list[Violation]:
    """Every import of the package at `root` against LAYERS and the forbidden lists."""
    modules = module_names(root)
    known = set(modules)
    found: list[Violation] = []
    for module, path in modules.items():
        own = layer_of(module)
        if own is None:
            found.append(Violation(module, "-", "belongs to no layer: place it in LAYERS"))
            continue
        name = LAYERS[own][0]
        for imported in sorted(imports_of(module, path, known)):
            top = imported.split(".")[0]
            if top == "mvpipe":
                target = layer_of(imported)
                if target is not None and target > own:
                    rule = f"{name} may not import {LAYERS[target][0]}"
                    found.append(Violation(module, imported, rule))
                rules = [
                    *((p, b, f"{p} stays apart") for p, b in FORBIDDEN_SIBLINGS.items()),
                    *(
                        (p, b, f"{p} goes through the pipeline")
                        for p, b in THROUGH_THE_PIPELINE.items()
                    ),
                ]
                for package, banned, rule in rules:
                    if _within(module, package) and any(_within(imported, b) for b in banned):
                        found.append(Violation(module, imported, rule))
            elif top in FORBIDDEN_PACKAGES.get(name, ()):
                found.append(Violation(module, imported, f"{name} may not import {top}"))
    return found


def test_every_import_flows_down_the_layers() -> None:
    root = Path(mvpipe.__file__).parent
    assert len(module_names(root)) > 90  # the walk did find the package
    assert [str(v) for v in violations(root)] == []


def test_the_check_reports_what_breaks_the_layers(tmp_path: Path) -> None:
    """A planted package: each kind of violation is reported, and what is allowed is not."""
    files = {
        "__init__.py": "",
        "errors.py": "",
        "models.py": "from mvpipe.settings import X\nfrom mvpipe import errors\n",
        "settings.py": "import redis\nfrom mvpipe.models import Y\n",
        "store/__init__.py": "",
        "store/records.py": "",
        "store/scenes.py": "from celery import Celery\nfrom mvpipe.providers import base\n",
        "providers/__init__.py": "from . import base\n",
        "providers/base.py": "def f():\n    from mvpipe.pipeline.plan import plan\n",
        "media/cut.py": "import redis\nfrom ..store import scenes\n",
        "pipeline/plan.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mvpipe.tasks import base\n",
        "pipeline/run.py": "import importlib\nimport redis\n"
        "importlib.import_module('mvpipe.tasks.base')\n"
        "def f():\n    __import__('boto3')\n    from botocore import session\n"
        "    import pynamodb.models\n",
        "tasks/base.py": "import celery\nfrom mvpipe import api\n",
        "api.py": "from mvpipe.cli import main\nfrom mvpipe.media.song import read_song\n"
        "from mvpipe.store import records\nfrom mvpipe.pipeline import plan\n",
        "cli/__init__.py": "from mvpipe import api\nfrom mvpipe.devstack import demo\n",
        "devstack/demo.py": "from mvpipe import api\n",
        "extra.py": "",
    }
    for name, text in files.items():
        path = tmp_path / "mvpipe" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert sorted(str(v) for v in violations(tmp_path / "mvpipe")) == sorted(
        [
            "mvpipe.models imports mvpipe.settings: pure may not import settings",
            "mvpipe.settings imports redis: settings may not import redis",
            "mvpipe.store.scenes imports celery: io may not import celery",
            "mvpipe.store.scenes imports mvpipe.providers.base: mvpipe.store stays apart",
            "mvpipe.providers.base imports mvpipe.pipeline.plan: io may not import pipeline",
            "mvpipe.media.cut imports mvpipe.store.scenes: mvpipe.media stays apart",
            "mvpipe.pipeline.plan imports mvpipe.tasks.base: pipeline may not import tasks",
            "mvpipe.pipeline.run imports mvpipe.tasks.base: pipeline may not import tasks",
            "mvpipe.pipeline.run imports boto3: pipeline may not import boto3",
            "mvpipe.pipeline.run imports botocore: pipeline may not import botocore",
            "mvpipe.pipeline.run imports pynamodb.models: pipeline may not import pynamodb",
            "mvpipe.tasks.base imports mvpipe.api: tasks may not import api",
            "mvpipe.api imports mvpipe.cli: api may not import cli",
            "mvpipe.api imports mvpipe.media.song: mvpipe.api goes through the pipeline",
            "mvpipe.api imports mvpipe.store.records: mvpipe.api goes through the pipeline",
            "mvpipe.extra imports -: belongs to no layer: place it in LAYERS",
        ]
    )


def test_the_core_never_imports_the_drills_package() -> None:
    # The task modules by name, not from `app.conf`: reading the app's configuration binds it
    # for the whole test process, before the suite's servers have set it up.
    core = ["mvpipe.api", "mvpipe.celery_app", "mvpipe.messaging.dispatch", *TASK_MODULES]
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
