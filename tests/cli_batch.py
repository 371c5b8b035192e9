"""`mvpipe` commands run one after another, each in its own process forked from one interpreter
that imported the CLI and the API its commands call once: each command still parses its own
arguments, runs `mvpipe.cli.main` as `python -m mvpipe.cli` does, and ends with its own exit
code, stdout and stderr. A command's process spends most of its ~1.3 s of CPU on those imports,
so a test with many commands pays them once (`python -m tests.cli_batch`, JSON on stdin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from tests.processes import stop_group

#: The repository's root: `-m tests.cli_batch` is found from there.
ROOT = Path(__file__).resolve().parent.parent


def mvpipe_batch(
    env: dict[str, str], *commands: tuple[str, ...], timeout: float = 180
) -> list[subprocess.CompletedProcess[str]]:
    """Each of `commands` in order, each in its own process under `env` (`cli_batch`). The
    batch runs in a session of its own: past `timeout` s it is stopped with the command it
    forked, whose process is in its group (`stop_group`), and `subprocess.TimeoutExpired`
    raised."""
    batch = subprocess.Popen(
        [sys.executable, "-m", "tests.cli_batch"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = batch.communicate(json.dumps([list(args) for args in commands]), timeout)
    except BaseException:  # a timeout, or the test interrupted: nothing of the batch outlives it
        stop_group(batch)
        raise
    assert batch.returncode == 0, err
    return [
        subprocess.CompletedProcess(args, r["returncode"], r["stdout"], r["stderr"])
        for args, r in zip(commands, json.loads(out), strict=True)
    ]


def _run_command(args: list[str]) -> NoReturn:
    """In the forked process: the command as `python -m mvpipe.cli` runs it, and its exit as
    the interpreter's (a `SystemExit`'s code, or a traceback and 1)."""
    from mvpipe.cli import main

    sys.argv = ["mvpipe", *args]
    code = 0
    try:
        main(prog_name="mvpipe")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _forked(args: list[str]) -> dict[str, object]:
    """One command in a child process, its streams in memory files (no file is left in a
    directory a test checks); its exit code and what it wrote."""
    sys.stdout.flush()
    sys.stderr.flush()
    out, err = os.memfd_create("stdout"), os.memfd_create("stderr")
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            _run_command(args)
        finally:
            os._exit(70)  # never back into the parent's loop
    _, status = os.waitpid(pid, 0)
    written = []
    for fd in (out, err):
        with os.fdopen(fd, "rb") as stream:
            stream.seek(0)
            written.append(stream.read().decode())
    return {"returncode": os.waitstatus_to_exitcode(status), "stdout": written[0],
            "stderr": written[1]}  # fmt: skip


def main() -> None:
    # what the commands import on their first use, before the forks
    import mvpipe.api
    import mvpipe.cli
    import mvpipe.devstack.demo  # noqa: F401

    json.dump([_forked(args) for args in json.load(sys.stdin)], sys.stdout)


if __name__ == "__main__":
    main()
