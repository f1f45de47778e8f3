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
