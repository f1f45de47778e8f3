"""The loss-against-compute plot's lines: each student's logged held-out checks at prorated compute."""

from __future__ import annotations

import math

import pytest

from stages.report import compute_curves
from store.artifacts import plan_artifact, publish_manifest
from store.evaluation import loss_vs_compute_figure
from store.training_log import write_training_log


def _rnn(root: str, name: str, stats: dict, rows: list[dict]) -> dict[str, str]:
    ref = plan_artifact(root, "rnn", {"name": name}, {})
    write_training_log(ref, rows)
    publish_manifest(ref, ref.config, ref.parents, stats=stats)
    return {"url": ref.url, "kind": "rnn"}


def test_curves_put_each_check_at_its_compute_and_skip_what_is_not_a_loss(tmp_path):
    root = str(tmp_path)
    lineage = {
        "teacher": {"url": "unused", "kind": "teacher"},
        "gru@seed1/smt": _rnn(root, "smt", {"steps": 10, "train_flops": 4e12}, [{"step": 10, "loss": 1.0}]),
        "gru@seed1/smt+dmt": _rnn(root, "dmt", {"steps": 100, "train_flops": 2e12, "held_out_loss": 0.5}, [
            {"step": 50, "loss": 2.0}, {"step": 100, "held_out_loss": 0.5}, {"step": 50, "held_out_loss": 1.0},
            {"step": 75, "held_out_loss": float("nan")}]),
        "gru@seed1/bptt": _rnn(root, "bptt", {"steps": 40, "train_flops": 4e12, "held_out_error": 0.3},
                               [{"step": 20, "held_out_error": 0.4}, {"step": 40, "held_out_error": 0.3}]),
        "gru@seed1/bptt-plateau": _rnn(root, "plateau", {"steps": 30, "train_flops": 3e12, "held_out_loss": 2.0},
                                       [{"step": 10, "held_out_loss": 2.0}, {"step": 30, "held_out_loss": 2.1}]),
    }
    curves = {(c["label"], c["mode"]): c for c in compute_curves(lineage)}
    assert set(curves) == {("gru@seed1", "smt+dmt"), ("gru@seed1", "bptt-plateau")}  # error checks: other units
    dmt = curves[("gru@seed1", "smt+dmt")]
    assert dmt["tflop"] == pytest.approx([4 + 1, 4 + 2])  # on top of the SMT student's 4 TFLOP; NaN left out
    assert dmt["bits"] == pytest.approx([1.0 / math.log(2), 0.5 / math.log(2)])
    plateau = curves[("gru@seed1", "bptt-plateau")]
    assert plateau["tflop"] == pytest.approx([1.0, 3.0]) and plateau["bits"] == pytest.approx([2.0 / math.log(2),
                                                                                               2.1 / math.log(2)])
    points = [{"label": "gru@seed1", "mode": "smt+dmt", "tflop": 6.0, "bits": 0.7}]
    fig = loss_vs_compute_figure(points, list(curves.values()))
    drawn = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 0]  # legend handles are empty
    assert sorted(len(line.get_xdata()) for line in drawn) == [2, 2]
