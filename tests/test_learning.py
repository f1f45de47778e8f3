"""End to end on CPU: a tiny teacher learns retrieval memories, SMT distils an RNN that reads them.

Retrieval (sources/synthetic.py): random tokens over 4 data symbols, a marker somewhere, the query marker
at the end; the needle (the token after the marker) is scored after the query. Chance accuracy is 1/4.
The RNN starts from the teacher's memory of a prefix and must carry it (and write the needle itself when
the marker comes after the prefix) through its own updates, never trained by unrolling.
"""

from __future__ import annotations

import numpy as np
import torch

from models.build import build_rnn, build_teacher
from schemas.config import RNNConfig, TeacherModelConfig, TeacherTrainConfig
from sources.synthetic import generate_task, task_vocab_size
from training.evaluation import read_metrics_per_position, teacher_dec0
from training.steps import smt_all_positions_loss, teacher_step_loss

LENGTH, DATA_VOCAB = 8, 4
PARAMS = {"length": LENGTH, "vocab": DATA_VOCAB}


def retrieval_tensors(num_docs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    docs = generate_task("retrieval", num_docs, seed, **PARAMS)
    x = torch.from_numpy(np.stack([d[0] for d in docs]))
    y = torch.from_numpy(np.stack([d[1] for d in docs]))
    return x, y


def test_smt_distils_a_retrieval_rnn_well_above_chance(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = retrieval_tensors(4000, seed=0)
    x_test, y_test = retrieval_tensors(500, seed=1)
    tcfg = TeacherModelConfig(
        vocab_size=task_vocab_size("retrieval", **PARAMS),
        width=32,
        heads=2,
        encoder_depth=2,
        decoder_depth=1,
        mlp_ratio=2,
        memory_tokens=2,
        memory_dim=16,
        context_len=LENGTH,
        future_len=LENGTH,
    )
    rcfg = RNNConfig(kind="transformer", width=32, depth=1, heads=2, readout="teacher_decoder")

    # 1. teacher: L_dec + L_dyn (with a reference updater) + L_unif
    teacher = build_teacher(tcfg)
    updater = build_rnn(rcfg, tcfg, teacher)
    opt = torch.optim.AdamW([*teacher.parameters(), *updater.parameters()], lr=3e-3, weight_decay=0.0)
    cfg = TeacherTrainConfig(model=tcfg)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = teacher_step_loss(teacher, updater, x[idx], y[idx], cfg, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.requires_grad_(False)
    ceiling = teacher_dec0(teacher, x_test, y_test).item()
    assert ceiling < 0.7, f"teacher readout loss {ceiling:.3f} nats (chance {np.log(4):.3f})"

    # 2. SMT: a fresh RNN (readout copied from the trained decoder) regresses every transition
    rnn = build_rnn(rcfg, tcfg, teacher)
    opt = torch.optim.AdamW(rnn.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(200):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = smt_all_positions_loss(teacher, rnn, x[idx], y[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    # 3. read: start from the teacher's memory of a prefix, the RNN does the remaining updates itself
    for prefix, floor in ((LENGTH - 3, 0.6), (LENGTH - 1, 0.8)):
        metrics = read_metrics_per_position(rnn, x_test, y_test, "teacher", teacher, prefix_len=prefix)
        accuracy, loss = metrics["accuracy"][-1].item(), metrics["loss"][-1].item()
        assert accuracy > floor, f"prefix {prefix}: accuracy {accuracy:.3f} (chance 0.25)"
        assert loss < np.log(DATA_VOCAB), f"prefix {prefix}: loss {loss:.3f} nats"


def _teacher_accuracy_after(anchors: str, steps: int, length: int) -> float:
    """Train a small teacher on retrieval through the stage's own sampler (store/crops.py) with `anchors`
    ('uniform' or 'scored'), then return its held-out accuracy on the answer read from its memory alone."""
    import tempfile

    from schemas.config import TokensConfig
    from stages.teacher import training_crops
    from store.crops import DocumentCrops
    from store.tokens import TokensArtifact, build_tokens_artifact
    from training.windows import context_windows

    params = {"length": length, "vocab": 8}
    tcfg = TeacherModelConfig(vocab_size=task_vocab_size("retrieval", **params), width=32, heads=2, encoder_depth=2,
                              decoder_depth=1, mlp_ratio=2, memory_tokens=2, memory_dim=16, context_len=length,
                              future_len=length // 2)
    cfg = TeacherTrainConfig(model=tcfg, anchors=anchors, run={"batch_size": 64})
    with tempfile.TemporaryDirectory() as root:
        tokens = TokensConfig(source="synthetic", task="retrieval", task_params=params, num_docs=2048)
        crops = DocumentCrops(TokensArtifact.open(build_tokens_artifact(tokens, root).url), "train")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    teacher = build_teacher(tcfg)
    updater = build_rnn(RNNConfig(kind="transformer", width=32, depth=1, heads=2), tcfg, teacher)
    opt = torch.optim.AdamW([*teacher.parameters(), *updater.parameters()], lr=3e-3, weight_decay=0.0)
    at = torch.full((64,), tcfg.context_len - 1)  # the anchor's column in every crop, as the stage has it
    for _ in range(steps):
        xb, yb = training_crops(crops, rng, cfg)  # the teacher stage's own sampler
        loss = teacher_step_loss(teacher, updater, torch.from_numpy(xb), torch.from_numpy(yb), cfg, g, anchors=at)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
    x_test, y_test = retrieval_tensors_of(500, 1, params)
    with torch.no_grad():
        memory = teacher.encode(context_windows(x_test, torch.full((500,), length - 1), length))
        return (teacher.readout(memory).argmax(-1) == y_test[:, -1]).float().mean().item()


def retrieval_tensors_of(num_docs: int, seed: int, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    docs = generate_task("retrieval", num_docs, seed, **params)
    return torch.from_numpy(np.stack([d[0] for d in docs])), torch.from_numpy(np.stack([d[1] for d in docs]))


def test_scored_anchors_teach_a_sparse_task_that_uniform_anchors_have_not_learned_yet(one_thread):
    """Retrieval scores only its last token: uniform anchors rarely put it in the decoder's future, so
    after the same steps the teacher is still near chance (1/8) where anchors near the answer solved it."""
    steps = 400
    scored = _teacher_accuracy_after("scored", steps, length=24)
    uniform = _teacher_accuracy_after("uniform", steps, length=24)
    assert scored > 0.7 and uniform < 0.3, (scored, uniform)  # measured: 0.86 and 0.15 (chance 0.125)
