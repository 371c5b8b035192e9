"""The failpoints are armed only where the environment names them, and only through the hooks
seam: the core's `hooks.reached` is a no-op otherwise."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from mvpipe import hooks
from mvpipe.devstack import failpoints
from mvpipe.settings import get_settings


@pytest.fixture
def disarmed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("MVPIPE_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        yield tmp_path
    finally:
        hooks.install(None)
        get_settings.cache_clear()


def test_nothing_is_armed_unless_the_environment_names_a_point(
    disarmed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MVPIPE_FAILPOINTS", raising=False)
    failpoints.arm()
    # Named only after arming (a production process never reads the variable again)
    monkeypatch.setenv("MVPIPE_FAILPOINTS", "during_cut=hold")
    failpoints.marker_dir(disarmed).mkdir()
    failpoints.release(disarmed, "during_cut")
    hooks.reached("during_cut")
    assert not failpoints.held(disarmed, "during_cut")


def test_an_armed_hold_point_is_reached_through_the_hooks_seam(
    disarmed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVPIPE_FAILPOINTS", "during_cut=hold")
    failpoints.arm()
    monkeypatch.delenv("MVPIPE_FAILPOINTS")  # read once, when armed
    failpoints.marker_dir(disarmed).mkdir()
    failpoints.release(disarmed, "during_cut")  # let go at once: the test must not wait
    hooks.reached("after_submit")  # not named: nothing happens
    assert not failpoints.held(disarmed, "after_submit")
    hooks.reached("during_cut")
    assert failpoints.held(disarmed, "during_cut")


def test_a_point_armed_to_raise_n_times_raises_that_often_then_lets_executions_go_on(
    disarmed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVPIPE_FAILPOINTS", "during_cut=raise:2")
    failpoints.arm()
    for _ in range(2):
        with pytest.raises(failpoints.FailpointError, match="failpoint during_cut raised"):
            hooks.reached("during_cut")
    hooks.reached("during_cut")  # repaired: goes on, as does every later execution
    hooks.reached("during_cut")
    assert failpoints.raised(disarmed, "during_cut") == 2


@pytest.mark.parametrize("mode", ["raise:", "raise:0", "raise:two", "raise:-1", "kill:0", "hold:2"])
def test_a_raise_count_that_is_no_count_is_refused_when_armed(
    disarmed: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("MVPIPE_FAILPOINTS", f"during_cut={mode}")
    with pytest.raises(ValueError, match="is not raise:N"):
        failpoints.arm()
    hooks.reached("during_cut")  # nothing armed: the core meets no failpoint
