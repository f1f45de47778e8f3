"""Training progress is visible wherever a run's output goes: a bar on a terminal, lines in logs."""

from training.loop import _Progress, progress_mode


def test_lines_off_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("SMT_PROGRESS", raising=False)
    assert progress_mode() == "lines"  # pytest's stderr is not a terminal
    with _Progress("distill gru", 100, 0, "lines") as progress:
        progress.update(loss=0.5, step=50, elapsed=12.3)
    assert capsys.readouterr().out.strip() == "distill gru: step 50/100 loss 0.5000 (12 s)"


def test_silent_when_asked(monkeypatch, capsys):
    monkeypatch.setenv("SMT_PROGRESS", "0")
    assert progress_mode() == "off"
    with _Progress("teacher", 10, 0, "off") as progress:
        progress.update(loss=1.0, step=5, elapsed=1.0)
    assert capsys.readouterr().out == ""


def test_wall_clock_budget_reports_seconds_not_the_step_cap(capsys):
    with _Progress("bptt gru", 100_000, 0, "lines", seconds=60.0) as progress:
        progress.update(loss=2.0, step=40, elapsed=30.4)
    assert capsys.readouterr().out.strip() == "bptt gru: step 40 loss 2.0000 (30/60 s budget)"


def test_bar_follows_elapsed_seconds_under_a_budget():
    with _Progress("bptt gru", 100_000, 0, "bar", seconds=60.0) as progress:
        progress.advance(step=7, elapsed=15.0)
        task = progress._bar.tasks[0]
        assert (task.total, task.completed, task.fields["step"]) == (60.0, 15.0, 7)
        progress.advance(step=9, elapsed=75.0)
        assert progress._bar.tasks[0].completed == 60.0  # never past the budget
