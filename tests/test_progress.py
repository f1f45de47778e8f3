"""Training progress is visible wherever a run's output goes: a bar on a terminal, lines in logs."""

import pytest

from training import loop as loop_mod
from training.loop import _Progress, progress_mode


@pytest.fixture(autouse=True)
def loud(monkeypatch):
    monkeypatch.delenv("SMT_PROGRESS", raising=False)
    monkeypatch.delenv("SMT_QUIET", raising=False)


def test_lines_off_a_terminal(capsys):
    assert progress_mode() == "lines"  # pytest's stderr is not a terminal
    with _Progress("distill gru", 100, 0, "lines") as progress:
        progress.update(loss=0.5, step=50, elapsed=12.3)
    assert capsys.readouterr().out.strip().splitlines() == [
        "distill gru: starting, 100 steps",  # at once, before the first logged step
        "distill gru: step 50/100 loss 0.5000 (12 s)",
    ]


def test_progress_off_turns_bars_off_and_quiet_turns_lines_off(monkeypatch, capsys):
    monkeypatch.setenv("SMT_PROGRESS", "0")
    assert progress_mode() == "lines"  # bars only: logs still show how far training got
    monkeypatch.setenv("SMT_QUIET", "1")
    assert progress_mode() == "off"
    with _Progress("teacher", 10, 0, "off") as progress:
        progress.update(loss=1.0, step=5, elapsed=1.0)
        progress.advance(step=5, elapsed=1.0)
    assert capsys.readouterr().out == ""


def test_heartbeat_when_steps_are_slow(monkeypatch, capsys):
    """A run whose first logged step is far away still prints a line within seconds, then now and then."""
    clock = [1000.0]
    monkeypatch.setattr(loop_mod.time, "monotonic", lambda: clock[0])
    with _Progress("teacher", 900, 300, "lines") as progress:
        progress.advance(step=301, elapsed=3.0)  # 0 s since start: nothing yet
        clock[0] += _Progress.FIRST_HEARTBEAT_S
        progress.advance(step=302, elapsed=13.0)
        clock[0] += _Progress.HEARTBEAT_S / 2
        progress.advance(step=303, elapsed=43.0)  # quiet for a while after a line
    assert capsys.readouterr().out.strip().splitlines() == [
        "teacher: starting, 900 steps, resuming at step 300",
        "teacher: step 302/900 (13 s)",
    ]


def test_wall_clock_budget_reports_seconds_not_the_step_cap(capsys):
    with _Progress("bptt gru", 100_000, 0, "lines", seconds=60.0) as progress:
        progress.update(loss=2.0, step=40, elapsed=30.4)
    assert capsys.readouterr().out.strip().splitlines()[-1] == "bptt gru: step 40 loss 2.0000 (30/60 s budget)"


def test_bar_follows_elapsed_seconds_under_a_budget():
    with _Progress("bptt gru", 100_000, 0, "bar", seconds=60.0) as progress:
        progress.advance(step=7, elapsed=15.0)
        task = progress._bar.tasks[0]
        assert (task.total, task.completed, task.fields["step"]) == (60.0, 15.0, 7)
        progress.advance(step=9, elapsed=75.0)
        assert progress._bar.tasks[0].completed == 60.0  # never past the budget
