"""experiments/state_size.py: accuracy against state size, read from committed experiment records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from experiments.run import RESULTS
from experiments.state_size import accuracy_rows, figure_png, load_records, main

NAMES = ["mqar-64x4-curriculum", "mqar-64x4-curriculum-mem512"]


def test_rows_come_from_the_records_at_their_state_sizes() -> None:
    records = load_records(NAMES)
    rows = accuracy_rows(records)
    sizes = {r["experiment"]: r["state_size"] for r in rows}
    assert sizes == {"mqar-64x4-curriculum": 4 * 32, "mqar-64x4-curriculum-mem512": 8 * 64}
    for name, record in records.items():
        own = [r for r in record["across_seeds"] if r["start"] == "init"]
        mine = [r for r in rows if r["experiment"] == name and r["model"] != "teacher"]
        assert len(mine) == len(own) > 0
        for r in own:
            row = next(m for m in mine if m["model"] == f"{r['variant']} {r['mode']}")
            assert (row["accuracy"], row["min"], row["max"]) == (r["accuracy_mean"], r["accuracy_min"],
                                                                 r["accuracy_max"])
        teacher = next(r for r in record["summary"] if r["rnn"] == "teacher")
        assert next(m for m in rows if m["experiment"] == name and m["model"] == "teacher")["accuracy"] == (
            teacher["accuracy"])


def test_figure_is_a_png_and_the_same_bytes_twice() -> None:
    rows = accuracy_rows(load_records(NAMES))
    png = figure_png(rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure_png(rows) == png


def test_a_record_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(typer.BadParameter, match="no record"):
        load_records(["no-such-experiment"], tmp_path)


def test_command_prints_a_table_and_writes_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = json.loads((RESULTS / f"{NAMES[1]}.json").read_text())
    (tmp_path / "one.json").write_text(json.dumps(record))
    main(["one"], png=tmp_path / "fig.png", records=tmp_path)
    out = capsys.readouterr().out
    assert out.startswith("| experiment | state_size |") and "| one | 512 | teacher |" in out
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
