"""The tests' batch of `mvpipe` commands (`tests.cli_batch`): nothing of it outlives its timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli_batch import mvpipe_batch
from tests.helpers import wait_for
from tests.test_cli import marked_processes
from tests.test_validate_first import _no_stack_env


def test_a_batch_past_its_timeout_stops_the_command_it_forked(tmp_path: Path) -> None:
    # Given a batch whose command waits on a store nothing answers (its retries last 300 s),
    # each of its processes marked in its environment
    mark = f"CLI_BATCH_UNDER_TEST={uuid.uuid4().hex}"
    name, value = mark.split("=")
    env = _no_stack_env(tmp_path) | {"MVPIPE_STORE_RETRY_SECONDS": "300", name: value}
    try:
        with ThreadPoolExecutor(1) as pool:
            ran = pool.submit(mvpipe_batch, env, ("status", str(uuid.uuid4())), timeout=10)
            # the batch's interpreter and the command it forked, before the timeout
            wait_for(lambda: len(marked_processes(mark)) >= 2, 10, "the command's process")
            # When the batch's timeout passes
            with pytest.raises(subprocess.TimeoutExpired):
                ran.result()
        # Then the command is stopped with the batch, not left waiting out its retries
        wait_for(lambda: not marked_processes(mark), 30, "every process of the batch to stop")
    finally:  # what the batch left, the test does not
        for pid in marked_processes(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
