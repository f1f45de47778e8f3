"""Teacher, distill, DMT, BPTT and evaluation stages on a tiny real pipeline (tests/_fixtures_training.py):
artifact layouts, content addressing, lineage refusals and exact resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _fixtures_labels import TINY_MODEL, make_teacher, make_tokens
from _fixtures_training import (
    BPTT_CFG,
    DISTILL_CFG,
    DMT_CFG,
    EVAL_CFG,
    GRU,
    TEACHER_CFG,
    TRANSFORMER,
    Chain,
    build_chain,
    state_equal,
)

from schemas.config import OptimConfig
from stages.bptt import bptt_stage
from stages.distill import distill_stage
from stages.dmt import dmt_stage
from stages.evaluate import evaluate_stage
from stages.teacher import TeacherQualityError, require_useful_teacher, teacher_stage
from store.artifacts import ArtifactError, read_manifest
from store.evaluation import decode_text, is_byte_text, is_pixel_data, plot_images, read_loss_figure
from store.rnn import load_rnn
from store.teacher import load_reference_updater, load_teacher
from training import loop as loop_mod
from training.evaluation import unigram_bits
from training.flops import student_training_flops
from training.prefetch import Prefetcher

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return build_chain(str(tmp_path_factory.mktemp("train_chain")))


@pytest.fixture(scope="module")
def rnns(chain: Chain) -> dict[str, str]:
    """name -> rnn artifact URL for SMT, SMT+DMT and BPTT of two variants."""
    urls: dict[str, str] = {}
    for variant in (TRANSFORMER, GRU):
        smt = distill_stage(chain.labels.url, chain.teacher.url, variant, DISTILL_CFG, chain.root)
        dmt = dmt_stage(smt.url, chain.labels.url, chain.teacher.url, DMT_CFG, chain.root)
        if variant is GRU:  # the default budget: as many training FLOPs as the SMT+DMT student
            flops = student_training_flops(variant, TINY_MODEL, DISTILL_CFG, DMT_CFG)
            cfg = BPTT_CFG.model_copy(update={"budget": "match_smt_flops"})
            bptt = bptt_stage(chain.tokens.url, variant, chain.teacher.url, cfg, chain.root, smt_flops=flops)
        else:
            bptt = bptt_stage(chain.tokens.url, variant, chain.teacher.url, BPTT_CFG, chain.root)
        urls.update(
            {f"{variant.label}/smt": smt.url, f"{variant.label}/smt+dmt": dmt.url, f"{variant.label}/bptt": bptt.url}
        )
    return urls


def test_teacher_artifact_layout_and_reuse(chain: Chain) -> None:
    url = Path(chain.teacher.url)
    assert {p.name for p in url.iterdir()} == {
        "teacher.safetensors",
        "updater.safetensors",
        "metrics.parquet",
        "timings.parquet",
        "manifest.json",
    }  # the checkpoint directory is gone once published
    manifest = read_manifest(chain.teacher.url, "teacher")
    assert manifest.config == TEACHER_CFG.address_json()
    assert manifest.parents == {"tokens": chain.tokens.hash}
    assert manifest.stats["steps"] == TEACHER_CFG.run.steps and manifest.stats["test_dec0_bits"] > 0
    metrics = pq.read_table(url / "metrics.parquet").to_pylist()
    assert [r["step"] for r in metrics] == [4, 8, 12] and {"dec", "dyn", "unif", "lr"} <= set(metrics[0])
    assert not {"seconds", "items_per_s"} & set(metrics[0])  # the clock's readings live apart
    timings = pq.read_table(url / "timings.parquet").to_pylist()
    assert [r["step"] for r in timings] == [4, 8, 12] and all(r["seconds"] > 0 for r in timings)
    before = os.path.getmtime(url / "manifest.json")
    assert teacher_stage(chain.tokens.url, TEACHER_CFG, chain.root) == chain.teacher  # complete: no work
    assert os.path.getmtime(url / "manifest.json") == before
    teacher, _ = load_teacher(chain.teacher.url)
    updater, _ = load_reference_updater(chain.teacher.url, teacher=teacher)
    # the reference updater carries the trained decoder, not the initial copy
    assert state_equal(updater.readout_head.decoder, teacher.decoder)


def test_teacher_stage_resumes_identically_after_a_kill(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill at step 8 (last checkpoint: 6), re-run the stage: same weights as the uninterrupted run."""
    real_step = loop_mod.TrainLoop._train_step

    def dying_step(self: loop_mod.TrainLoop, batch: object) -> dict[str, torch.Tensor]:
        if self.step == 8:
            raise RuntimeError("simulated kill")
        return real_step(self, batch)

    root = str(tmp_path)
    tokens = make_tokens(root)  # same documents as the chain's (its URL, hence its hash, differs)
    monkeypatch.setattr(loop_mod.TrainLoop, "_train_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        teacher_stage(tokens.url, TEACHER_CFG, root)
    monkeypatch.setattr(loop_mod.TrainLoop, "_train_step", real_step)
    ref = teacher_stage(tokens.url, TEACHER_CFG, root)
    assert read_manifest(ref.url).stats["steps"] == TEACHER_CFG.run.steps
    resumed, _ = load_teacher(ref.url)
    straight, _ = load_teacher(chain.teacher.url)
    assert state_equal(resumed, straight)


def test_training_stages_publish_rnn_artifacts(chain: Chain, rnns: dict[str, str]) -> None:
    teacher, teacher_manifest = load_teacher(chain.teacher.url)
    smt = read_manifest(rnns["transformer/smt"], "rnn")
    assert smt.parents == {"labels": chain.labels.hash, "teacher": chain.teacher.hash}
    assert smt.stats["transitions_per_s"] > 0 and smt.stats["transitions"] == 24 * 32
    assert {p.name for p in Path(rnns["transformer/smt"]).iterdir()} == {
        "rnn.safetensors",
        "rnn.json",
        "metrics.parquet",
        "timings.parquet",
        "manifest.json",
    }
    recipe = json.loads((Path(rnns["transformer/smt"]) / "rnn.json").read_text())
    assert recipe["variant"] == TRANSFORMER.model_dump(mode="json") and recipe["stage"] == "distill"
    rnn, _ = load_rnn(rnns["transformer/smt"])
    # SMT regresses the updater only: the copied teacher readout is the teacher's, untouched
    assert state_equal(rnn.readout_head.decoder, teacher.decoder)
    log = pq.read_table(Path(rnns["transformer/smt"]) / "metrics.parquet").to_pylist()
    assert log[-1]["dyn"] < log[0]["dyn"]  # regression onto labels makes progress in 24 steps
    gru_log = pq.read_table(Path(rnns["gru/smt"]) / "metrics.parquet").to_pylist()
    assert "readout" in gru_log[0]  # the MLP head is trained by CE on stored memories

    dmt = read_manifest(rnns["gru/smt+dmt"], "rnn")
    assert dmt.parents["init"] == read_manifest(rnns["gru/smt"]).hash and dmt.config["stage"] == "dmt"
    assert {"dyn", "readout", "dec", "unif"} <= set(
        pq.read_table(Path(rnns["gru/smt+dmt"]) / "metrics.parquet").column_names
    )

    bptt = read_manifest(rnns["gru/bptt"], "rnn")
    assert bptt.parents == {"tokens": chain.tokens.hash, "teacher": teacher_manifest.hash}
    assert bptt.stats["budget"] == "match_smt_flops"
    smt_flops = read_manifest(rnns["gru/smt"]).stats["train_flops"] + dmt.stats["train_flops"]
    assert bptt.stats["budget_flops"] == smt_flops  # the configured steps ran, so planned == trained
    # the largest whole number of BPTT steps within the student's FLOPs
    assert bptt.stats["train_flops"] <= smt_flops < bptt.stats["train_flops"] + bptt.stats["step_flops"]
    fresh_bptt, _ = load_rnn(rnns["transformer/bptt"])
    assert fresh_bptt.readout_head.decoder.head.weight.shape == teacher.decoder.head.weight.shape


def test_lineage_is_refused_with_a_clear_message(chain: Chain, rnns: dict[str, str], tmp_path: Path) -> None:
    other = make_teacher(chain.root, chain.tokens, seed=7)  # same tokens, another (random) teacher
    with pytest.raises(ArtifactError, match="teacher"):
        distill_stage(chain.labels.url, other.url, GRU, DISTILL_CFG, str(tmp_path))
    with pytest.raises(ArtifactError, match="do not belong together"):
        dmt_stage(rnns["gru/smt"], chain.labels.url, other.url, DMT_CFG, str(tmp_path))
    with pytest.raises(ArtifactError, match="do not belong together"):
        evaluate_stage(rnns, chain.tokens.url, other.url, chain.labels.url, EVAL_CFG, str(tmp_path))


def test_evaluation_artifact(chain: Chain, rnns: dict[str, str]) -> None:
    ref = evaluate_stage(rnns, chain.tokens.url, chain.teacher.url, chain.labels.url, EVAL_CFG, chain.root)
    names = {p.name for p in Path(ref.url).iterdir()}
    assert {
        "metrics.parquet",
        "summary.parquet",
        "read_loss_teacher.png",
        "read_loss_init.png",
        "samples.json",
        "manifest.json",
    } <= names
    metrics = pq.read_table(Path(ref.url) / "metrics.parquet")
    assert {"rnn", "mode", "start", "position", "loss_bits"} <= set(metrics.column_names)
    rows = metrics.to_pylist()
    assert {r["mode"] for r in rows} == {"smt", "smt+dmt", "bptt", "teacher_dec0"}
    assert {r["start"] for r in rows} == {"teacher", "init"}
    per_rnn = [r for r in rows if r["rnn"] == "gru/smt" and r["start"] == "init"]
    assert [r["position"] for r in per_rnn] == list(range(EVAL_CFG.prefix_len, EVAL_CFG.prefix_len + EVAL_CFG.steps))
    summary = pq.read_table(Path(ref.url) / "summary.parquet").to_pylist()
    n_bptt = sum(name.endswith("/bptt") for name in rnns)  # BPTT RNNs are read from their own init only
    assert len(summary) == 1 + 2 * len(rnns) - n_bptt and all(r["mean_bits"] > 0 for r in summary)
    assert not [r for r in summary if r["mode"] == "bptt" and r["start"] == "teacher"]
    manifest = read_manifest(ref.url, "evaluation")
    assert manifest.parents["teacher"] == chain.teacher.hash and manifest.stats["samples"] == "text"
    samples = json.loads((Path(ref.url) / "samples.json").read_text())
    assert len(samples) == len(rnns) and all(len(s["continuation"]) <= EVAL_CFG.sample_len for s in samples)


def test_read_loss_plots_show_every_series() -> None:
    """One scored position (retrieval's answer): a bar per RNN, not lines of one invisible point each;
    several positions: lines with markers, no two series in one colour."""
    rows = [
        {"rnn": f"{v}/{m}", "mode": m, "start": "init", "position": p, "loss_bits": 1.0 + i + p}
        for i, (v, m) in enumerate((v, m) for v in ("gru", "lstm", "mlp", "transformer") for m in ("smt", "bptt"))
        for p in (15,)
    ]
    import pyarrow as pa

    single = read_loss_figure(pa.Table.from_pylist(rows), "init", {15: 0.5})
    bars = single.axes[0].patches
    assert len(bars) == 8 and len({b.get_facecolor() for b in bars}) == 8
    several = [{**r, "position": p} for r in rows for p in (12, 13, 14)]
    lines = read_loss_figure(pa.Table.from_pylist(several), "init", None).axes[0].get_lines()
    assert len(lines) == 8 and len({line.get_color() for line in lines}) == 8
    assert all(line.get_marker() not in (None, "None", "") for line in lines)


def test_pixel_samples_and_text_rendering(tmp_path: Path) -> None:
    assert is_pixel_data(np.full(3, 784), 256) and not is_pixel_data(np.array([784, 10]), 256)
    assert decode_text(np.array([72, 105, -1, 7])) == "Hi?"
    assert is_byte_text(256) and is_byte_text(128) and not is_byte_text(9)  # synthetic tokens print as ids
    plot_images(str(tmp_path / "s.png"), [np.arange(784) % 256] * 2, ["truth", "rnn"])
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_prefetcher_keeps_order_and_reraises() -> None:
    def source():
        yield from range(5)
        raise ValueError("reader failed")

    stream = Prefetcher(source, depth=2)
    assert [next(stream) for _ in range(5)] == list(range(5))
    with pytest.raises(ValueError, match="reader failed"):
        next(stream)
    stream.close()


def test_evaluation_that_would_score_nothing_is_refused(chain: Chain, rnns: dict[str, str], tmp_path: Path) -> None:
    far = EVAL_CFG.model_copy(update={"prefix_len": 500})  # past the end of every test document
    with pytest.raises(ArtifactError, match="score nothing"):
        evaluate_stage(rnns, chain.tokens.url, chain.teacher.url, chain.labels.url, far, str(tmp_path))


def test_distilled_rnn_starts_from_the_teachers_empty_memory(chain: Chain, rnns: dict[str, str]) -> None:
    """m_{-1} of an SMT student is the teacher's memory of an empty context, not a random vector."""
    from store.rnn import load_rnn
    from store.teacher import load_teacher

    teacher, _ = load_teacher(chain.teacher.url)
    rnn, _ = load_rnn(rnns["gru/smt"], "cpu")
    empty = torch.full((1, teacher.cfg.context_len), -1, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(rnn.init_memory(1), teacher.encode(empty), rtol=1e-5, atol=1e-5)


def test_teacher_quality_gate_stops_a_teacher_that_learned_nothing(chain: Chain, tmp_path: Path) -> None:
    """12 steps on text leave the teacher worse than guessing byte frequencies: the gate refuses it before
    the label job, says by how much, and can be turned off."""
    stats = read_manifest(chain.teacher.url).stats
    assert stats["test_dec0_bits"] > stats["test_unigram_bits"] > 0 and stats["chance_bits"] == 8.0
    with pytest.raises(TeacherQualityError, match="has not learned the task: held-out L_dec0"):
        require_useful_teacher(chain.teacher.url, chain.tokens.url, 0.05)
    quality = require_useful_teacher(chain.teacher.url, chain.tokens.url, None)
    assert quality == {"dec0": stats["test_dec0_bits"], "unigram": stats["test_unigram_bits"], "chance": 8.0,
                       "accuracy": stats["test_dec0_accuracy"]}

    # the accuracy test, for tasks with one right answer: this teacher's is far from 0.99, and the bits test
    # being off does not turn it off
    assert 0 <= stats["test_dec0_accuracy"] < 0.5
    with pytest.raises(TeacherQualityError, match="held-out top-1 accuracy"):
        require_useful_teacher(chain.teacher.url, chain.tokens.url, None, min_accuracy=0.99)
    assert require_useful_teacher(chain.teacher.url, chain.tokens.url, None, min_accuracy=0.0) == quality

    # a teacher published before the gate existed has no unigram figure and no accuracy: they are recomputed,
    # the same
    old = tmp_path / "teacher-old"
    shutil.copytree(chain.teacher.url, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for recent in ("test_unigram_bits", "chance_bits", "test_dec0_accuracy"):
        del manifest["stats"][recent]
    (old / "manifest.json").write_text(json.dumps(manifest))
    without_accuracy = {k: v for k, v in quality.items() if k != "accuracy"}
    assert require_useful_teacher(str(old), chain.tokens.url, None) == without_accuracy
    assert require_useful_teacher(str(old), chain.tokens.url, None, min_accuracy=0.0) == quality


def test_a_teacher_started_from_another_loads_its_weights_and_counts_its_cost(chain: Chain) -> None:
    """teacher.init_from: a longer context (a curriculum over lengths) starts from the chain's teacher; its
    lineage names that parent, its train_flops include the parent's, and another shape or a missing parent
    is refused by name."""
    from store.teacher import recorded_train_flops
    from training.flops import teacher_step_flops

    parent = read_manifest(chain.teacher.url, "teacher")
    longer = TINY_MODEL.model_copy(update={"context_len": 24})
    cfg = TEACHER_CFG.model_copy(update={"model": longer, "run": TEACHER_CFG.run.model_copy(update={"steps": 2}),
                                         "optim": OptimConfig(lr=1e-7, weight_decay=0.0),
                                         "init_from": chain.teacher.url.rsplit("/", 1)[1]})  # a name under root
    ref = teacher_stage(chain.tokens.url, cfg, chain.root)
    manifest = read_manifest(ref.url, "teacher")
    assert manifest.parents == {"tokens": chain.tokens.hash, "init": parent.hash}
    stats = manifest.stats
    assert stats["init_flops"] == recorded_train_flops(parent) > 0 and stats["init_steps"] == parent.stats["steps"]
    assert stats["train_flops"] == 2 * teacher_step_flops(cfg) + stats["init_flops"]
    before, _ = load_teacher(chain.teacher.url)
    after, _ = load_teacher(ref.url)
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name  # two steps at lr 1e-7 from the parent's weights
    fresh = teacher_stage(chain.tokens.url, cfg.model_copy(update={"init_from": None}), chain.root)
    assert not state_equal(load_teacher(fresh.url)[0], after)  # without it: a fresh init, another address

    wider = cfg.model_copy(update={"model": longer.model_copy(update={"width": 64})})
    with pytest.raises(ArtifactError, match="another shape \\(width differ\\)"):
        teacher_stage(chain.tokens.url, wider, chain.root)
    with pytest.raises(ArtifactError, match="teacher.init_from: no artifact at .*train that teacher first"):
        teacher_stage(chain.tokens.url, cfg.model_copy(update={"init_from": "teacher-0000000000000000"}), chain.root)


def test_a_relative_teacher_starts_a_persistent_one_with_the_same_weights(chain: Chain) -> None:
    """encoder_memory is not a weight shape: a causal teacher continues as a persistent one (the same weights,
    another memory); encoder_attention still is refused as another shape."""
    two_steps = TEACHER_CFG.run.model_copy(update={"steps": 2})
    causal = TEACHER_CFG.model_copy(update={"model": TINY_MODEL.model_copy(update={"encoder_attention": "causal"}),
                                            "run": two_steps})
    parent = teacher_stage(chain.tokens.url, causal, chain.root)
    persistent = causal.model_copy(update={
        "model": causal.model.model_copy(update={"encoder_memory": "persistent"}), "init_from": parent.url,
        "optim": OptimConfig(lr=1e-7, weight_decay=0.0)})
    child = teacher_stage(chain.tokens.url, persistent, chain.root)
    before, after = load_teacher(parent.url)[0], load_teacher(child.url)[0]
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    x = torch.randint(0, TINY_MODEL.vocab_size, (3, 9))
    assert (before.encode(x) - after.encode(x)).abs().max() > 1e-3  # same weights, another memory
    with pytest.raises(ArtifactError, match="another shape \\(encoder_attention differ\\)"):
        teacher_stage(chain.tokens.url, TEACHER_CFG.model_copy(update={"init_from": parent.url, "run": two_steps}),
                      chain.root)


def test_a_chained_teacher_trains_on_its_transitions_and_counts_fewer_flops(chain: Chain) -> None:
    """teacher.chain: the stage reads batch_size/chain crops long enough for the chain, counts the chain's
    FLOPs, and lives at another address than the unchained teacher (which keeps its own)."""
    from training.flops import teacher_step_flops

    cfg = TEACHER_CFG.model_copy(update={"chain": 4, "run": TEACHER_CFG.run.model_copy(update={"steps": 3})})
    ref = teacher_stage(chain.tokens.url, cfg, chain.root)
    assert ref.hash != chain.teacher.hash
    stats = read_manifest(ref.url, "teacher").stats
    assert stats["train_flops"] == 3 * teacher_step_flops(cfg) < 3 * teacher_step_flops(TEACHER_CFG)
    assert np.isfinite(stats["test_dec0_bits"])


def test_unigram_bits() -> None:
    assert unigram_bits(np.array([0, 1, 2, 3, -1, -1])) == pytest.approx(2.0)
    assert unigram_bits(np.array([5, 5, 5, -1])) == 0.0


def test_a_second_seed_trains_another_student_and_seed_0_keeps_its_address(chain: Chain, rnns: dict[str, str]) -> None:
    from flows.graph import seeded_for

    assert seeded_for(DISTILL_CFG, GRU) is DISTILL_CFG  # seed 0: the config (and address) of a run without seeds
    gru1 = GRU.model_copy(update={"seed": 1})
    assert gru1.label == "gru@seed1" and gru1.base_label == "gru"
    ref = distill_stage(chain.labels.url, chain.teacher.url, gru1, seeded_for(DISTILL_CFG, gru1), chain.root)
    assert ref.url != rnns["gru/smt"]
    first, _ = load_rnn(rnns["gru/smt"])
    second, _ = load_rnn(ref.url)
    assert second.cfg.seed == 1 and not state_equal(first, second)  # its own init and data order
    assert read_manifest(ref.url).config["train"]["run"]["seed"] == DISTILL_CFG.run.seed + 1


def test_seed_rows_give_mean_and_range_per_variant_mode_and_start() -> None:
    from schemas.config import PipelineConfig
    from stages.report import seed_rows

    cfg = PipelineConfig(variants=[GRU, TRANSFORMER], seeds=[0, 2])
    assert [v.label for v in cfg.students] == ["gru", "gru@seed2", "transformer", "transformer@seed2"]
    row = {"mode": "smt", "start": "init", "accuracy": 0.5}
    rows = [{"rnn": "teacher", "variant": "teacher", "seed": None, "mode": "teacher_dec0", "start": "teacher",
             "mean_bits": 0.1, "accuracy": 1.0},
            {**row, "rnn": "gru/smt", "variant": "gru", "seed": 0, "mean_bits": 1.0},
            {**row, "rnn": "gru@seed2/smt", "variant": "gru", "seed": 2, "mean_bits": 2.0, "accuracy": 0.7},
            {**row, "rnn": "transformer/smt", "variant": "transformer", "seed": 0, "mean_bits": 1.0},
            {**row, "rnn": "transformer/bptt", "variant": "transformer", "seed": 0, "mode": "bptt"},
            {**row, "rnn": "transformer/bptt-plateau", "variant": "transformer", "seed": 0, "mode": "bptt"}]
    (only,) = seed_rows(rows)  # the teacher, a variant with one seed, two different baselines: no spread
    assert only == {"variant": "gru", "mode": "smt", "start": "init", "seeds": "0,2", "bits_mean": 1.5,
                    "bits_min": 1.0, "bits_max": 2.0, "accuracy_mean": 0.6, "accuracy_min": 0.5,
                    "accuracy_max": 0.7}


@pytest.mark.slow
def test_compiled_dmt_stage_trains_like_the_eager_one(chain: Chain, rnns: dict[str, str]) -> None:
    """run.compile on the CPU (blocks, frozen decoder, rollout through torch.compile): its own address, and
    the same logged losses as the eager stage up to float rounding (tests/test_compiled.py checks the parts)."""
    compiled_cfg = DMT_CFG.model_copy(update={"run": DMT_CFG.run.model_copy(update={"compile": True})})
    smt = rnns["transformer/smt"]
    compiled = dmt_stage(smt, chain.labels.url, chain.teacher.url, compiled_cfg, chain.root)
    assert compiled.url != rnns["transformer/smt+dmt"]
    eager_stats, compiled_stats = (read_manifest(url).stats for url in (rnns["transformer/smt+dmt"], compiled.url))
    assert compiled_stats["steps"] == eager_stats["steps"] == DMT_CFG.run.steps
    for name in ("loss", "dyn", "readout", "dec"):
        assert compiled_stats[f"final_{name}"] == pytest.approx(eager_stats[f"final_{name}"], rel=1e-3), name


def test_input_noise_perturbs_only_the_start_memory_and_is_the_same_for_the_same_seed() -> None:
    """distill.input_noise: m_t moves by N(0, sigma^2), the target and the tokens do not; a seed fixes the noise."""
    from stages.distill import with_input_noise
    from store.labels import Transitions

    torch.manual_seed(0)
    batches = [Transitions(torch.randn(64, 512).half(), torch.arange(64), torch.randn(64, 512), torch.arange(64))
               for _ in range(3)]
    noisy = list(with_input_noise(iter(batches), 0.05, seed=7))
    for clean, moved in zip(batches, noisy, strict=True):
        assert moved.m_next is clean.m_next and moved.x_next is clean.x_next and moved.y_next is clean.y_next
        assert moved.m.dtype == torch.float32
        assert abs((moved.m - clean.m.float()).std().item() - 0.05) < 0.002
    again = list(with_input_noise(iter(batches), 0.05, seed=7))
    other = list(with_input_noise(iter(batches), 0.05, seed=8))
    assert all(torch.equal(a.m, b.m) for a, b in zip(noisy, again, strict=True))
    assert not torch.equal(noisy[0].m, other[0].m)
    assert not torch.equal(noisy[0].m - batches[0].m.float(), noisy[1].m - batches[1].m.float())  # fresh per batch


def test_a_student_distilled_with_input_noise_is_another_artifact(chain: Chain, rnns: dict[str, str]) -> None:
    """input_noise is left out of the address at 0 (every earlier student keeps its own) and moves it otherwise."""
    noisy_cfg = DISTILL_CFG.model_copy(update={"input_noise": 0.05})
    assert "input_noise" not in DISTILL_CFG.address_json()
    ref = distill_stage(chain.labels.url, chain.teacher.url, GRU, noisy_cfg, chain.root)
    plain = distill_stage(chain.labels.url, chain.teacher.url, GRU, DISTILL_CFG, chain.root)
    assert ref.hash != plain.hash
    assert not state_equal(load_rnn(ref.url)[0], load_rnn(plain.url)[0])
