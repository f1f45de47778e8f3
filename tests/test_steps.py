"""Losses and training steps: values against hand computations, and where gradients may (not) flow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tiny import tiny_teacher

from models.build import build_rnn, build_teacher
from models.rnn import RNN
from schemas.config import DMTConfig, RNNConfig, RunConfig, TeacherTrainConfig
from training.losses import decoding_loss, dynamics_loss, masked_cross_entropy, uniformity_loss
from training.steps import (
    bptt_step_loss,
    dmt_step_loss,
    pull_steps,
    sample_anchors,
    smt_all_positions_loss,
    smt_step_loss,
    teacher_step_loss,
)

V, K, D = 7, 2, 8
TCFG = tiny_teacher(vocab_size=V, memory_tokens=K, memory_dim=D, context_len=5, future_len=3)
RCFG = RNNConfig(kind="transformer", width=16, depth=1, heads=2, hidden=16, readout="teacher_decoder")


@pytest.fixture
def models():
    torch.manual_seed(0)
    teacher = build_teacher(TCFG)
    return teacher, build_rnn(RCFG, TCFG, teacher)


def tokens(b: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (b, t), generator=g)
    return x, torch.roll(x, -1, dims=1)


def grads(loss: torch.Tensor, params) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=True))


def nonzero(gs) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in gs)


def record_updates(rnn: RNN) -> list[torch.Tensor]:
    """Patch rnn.update on this instance so every output is kept with retain_grad()."""
    outputs: list[torch.Tensor] = []
    original = rnn.update

    def update(m, x):
        out = original(m, x)
        if out.requires_grad:
            out.retain_grad()
        outputs.append(out)
        return out

    rnn.update = update
    return outputs


# ----------------------------------------------------------------------------- losses


def test_decoding_loss_weights_positions_and_masks_pads():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, V), torch.tensor([[1, -1, 2], [-1, 4, 5]])
    dec, dec0 = decoding_loss(logits, targets, gamma=0.5)
    ce = F.cross_entropy(logits.reshape(-1, V), targets.clamp(min=0).reshape(-1), reduction="none").view(2, 3)
    w = torch.tensor([1.0, 0.5, 0.25])
    weighted = ce[0, 0] * w[0] + ce[0, 2] * w[2] + ce[1, 1] * w[1] + ce[1, 2] * w[2]
    expected = weighted / (w[0] + 2 * w[2] + w[1])
    torch.testing.assert_close(dec, expected)
    torch.testing.assert_close(dec0, ce[0, 0])
    assert masked_cross_entropy(logits, torch.full((2, 3), -1)) == 0.0


def test_dynamics_loss_masks_rows():
    pred, target = torch.zeros(3, 4), torch.tensor([[1.0] * 4, [2.0] * 4, [100.0] * 4])
    assert dynamics_loss(pred, target, torch.tensor([True, True, False])) == pytest.approx(2.5)
    assert dynamics_loss(pred[:2], target[:2]) == pytest.approx(2.5)


def test_uniformity_loss_is_zero_when_collapsed_and_negative_when_spread():
    same = torch.ones(10, K * D)
    assert uniformity_loss(same, K).item() == pytest.approx(0.0, abs=1e-6)
    memory = torch.randn(100, K * D)
    spread = uniformity_loss(memory, K, samples=64, generator=torch.Generator().manual_seed(0))
    assert -2.0 * 4.0 <= spread < -1.0  # squared distances of unit vectors are <= 4, t = 2
    again = uniformity_loss(memory, K, samples=64, generator=torch.Generator().manual_seed(0))
    assert again == spread  # the sample is drawn from the given generator


# ----------------------------------------------------------------------------- teacher step


def test_teacher_step_matches_a_hand_computation(models):
    teacher, updater = models
    cfg = TeacherTrainConfig(model=TCFG, unif_weight=0.0)
    x, y = tokens(2, 9)
    anchors = torch.tensor([1, 6])
    out = teacher_step_loss(teacher, updater, x, y, cfg, anchors=anchors)
    pad = torch.full((2, TCFG.context_len), -1)
    xp = torch.cat((pad, x, pad), 1)  # index p of x is p + Tc in xp
    yp = torch.cat((pad, y, pad), 1)
    tc, tf = TCFG.context_len, TCFG.future_len
    ctx = torch.stack([xp[b, a + 1 : a + 1 + tc] for b, a in enumerate(anchors.tolist())])
    ctx_next = torch.stack([xp[b, a + 2 : a + 2 + tc] for b, a in enumerate(anchors.tolist())])
    x_fut = torch.stack([xp[b, a + 1 + tc : a + tc + tf] for b, a in enumerate(anchors.tolist())])
    y_fut = torch.stack([yp[b, a + tc : a + tc + tf] for b, a in enumerate(anchors.tolist())])
    m_t, m_next = teacher.encode(ctx), teacher.encode(ctx_next)
    dec, dec0 = decoding_loss(teacher.decode(m_t, x_fut), y_fut)
    dyn = F.mse_loss(updater.update(m_t, x[torch.arange(2), anchors + 1]), m_next)
    torch.testing.assert_close(out["dec"], dec)
    torch.testing.assert_close(out["dec0"], dec0)
    torch.testing.assert_close(out["dyn"], dyn)
    torch.testing.assert_close(out["loss"], dec + 0.1 * dyn)


def test_a_chain_of_anchors_gives_the_losses_and_gradients_of_its_transitions_taken_one_by_one(models):
    """teacher.chain shares the inner memories of consecutive transitions; the objective must not change:
    chained anchors t .. t+c-1 score exactly what c unchained copies of the sequence anchored there do."""
    teacher, updater = models
    chain = 3
    x, y = tokens(2, 12)
    x[1, 7:] = -1  # the second chain's last transition runs past its sequence's end: masked alike
    y[1, 6:] = -1
    start = torch.tensor([0, 4])
    every = dict(model=TCFG, unif_samples=10_000)  # no subsampling: the same tokens on both sides
    chained = teacher_step_loss(teacher, updater, x, y, TeacherTrainConfig(**every, chain=chain,
                                run=RunConfig(batch_size=2 * chain)), anchors=start)
    one_by_one = teacher_step_loss(
        teacher, updater, x.repeat_interleave(chain, 0), y.repeat_interleave(chain, 0),
        TeacherTrainConfig(**every), anchors=(start[:, None] + torch.arange(chain)).flatten(),
    )
    for name in ("dec", "dec0", "dyn", "unif", "loss"):
        torch.testing.assert_close(chained[name], one_by_one[name], rtol=1e-5, atol=1e-6)
    params = [*teacher.parameters(), *updater.updater_parameters()]
    for a, b in zip(grads(chained["loss"], params), grads(one_by_one["loss"], params), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dyn_rollout_scores_the_updaters_own_steps_along_the_chain(models):
    """teacher.dyn_rollout: L_dyn compares the updater's 1..c-step rollout from the chain's first memory with
    the encoder's memories (computed here step by step, independently); the other losses stay as they were."""
    teacher, updater = models
    chain, x, y = 3, *tokens(2, 12)
    x[1, 7:] = -1  # the second chain's last transition runs past its sequence's end: masked
    start = torch.tensor([0, 4])
    every = dict(model=TCFG, unif_samples=10_000, chain=chain, run=RunConfig(batch_size=2 * chain))
    plain = teacher_step_loss(teacher, updater, x, y, TeacherTrainConfig(**every), anchors=start)
    rolled = teacher_step_loss(teacher, updater, x, y, TeacherTrainConfig(**every, dyn_rollout=True), anchors=start)
    for name in ("dec", "dec0", "unif"):
        torch.testing.assert_close(rolled[name], plain[name])
    tc = TCFG.context_len
    errors = []
    for b, a in enumerate(start.tolist()):
        m = teacher.encode(torch.cat([torch.full((max(tc - a - 1, 0),), -1), x[b, max(a + 1 - tc, 0) : a + 1]])[None])
        for j in range(1, chain + 1):
            if x[b, a + j] < 0:
                continue
            m = updater.update(m, x[b, a + j][None])
            ctx = torch.cat([torch.full((max(tc - a - j - 1, 0),), -1), x[b, max(a + j + 1 - tc, 0) : a + j + 1]])
            errors.append(F.mse_loss(m, teacher.encode(ctx[None])))
    assert len(errors) == 5  # 3 + 2 unmasked steps
    torch.testing.assert_close(rolled["dyn"], torch.stack(errors).mean(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(rolled["dyn"], plain["dyn"])  # steps 2..c start from the updater's own memory
    with pytest.raises(ValueError, match="chain >= 2"):
        TeacherTrainConfig(model=TCFG, dyn_rollout=True)


def test_chained_anchors_stay_inside_short_sequences():
    x = torch.full((300, 10), -1)
    x[:, :6] = 1  # six real tokens each
    t = sample_anchors(x, torch.Generator().manual_seed(0), chain=4)
    counts = torch.bincount(t, minlength=3)
    assert counts.numel() == 3  # the chain's last anchor t+3 <= 5
    assert counts.min() > 60 and counts.max() < 140  # the 3 possible starts drawn alike (100 each expected)
    with pytest.raises(ValueError, match="multiple of teacher.chain"):
        TeacherTrainConfig(model=TCFG, chain=3, run=RunConfig(batch_size=8))


def test_teacher_dynamics_gradient_reaches_encoder_through_the_target_memory(models):
    teacher, updater = models

    class ConstantUpdater(RNN):  # ignores m: any encoder gradient of L_dyn must come through m_{t+1}
        def __init__(self):
            super().__init__(RCFG, TCFG, torch.nn.Identity())

        def step(self, m, x):
            return self.initial.expand(m.shape[0], -1)

    cfg = TeacherTrainConfig(model=TCFG)
    x, y = tokens(4, 9)
    g = torch.Generator().manual_seed(0)
    out = teacher_step_loss(teacher, ConstantUpdater(), x, y, cfg, g)
    assert nonzero(grads(out["dyn"], teacher.encoder.parameters()))
    assert not nonzero(grads(out["dyn"], teacher.decoder.parameters()))
    out = teacher_step_loss(teacher, updater, x, y, cfg, g)
    assert nonzero(grads(out["dyn"], updater.updater_parameters()))
    assert nonzero(grads(out["loss"], teacher.parameters()))


# ----------------------------------------------------------------------------- SMT vs BPTT credit paths


def test_smt_step_sends_no_gradient_into_earlier_updates_but_bptt_does(models):
    teacher, rnn = models
    x, y = tokens(3, 6)
    # SMT: m_t produced by an earlier update call on a leaf memory; step t's loss must not reach it
    m_earlier = teacher.encode(x[:, :3]).detach().requires_grad_(True)
    m_t = rnn.update(m_earlier, x[:, 3])
    m_next = teacher.encode(x[:, :5]).detach()
    out = smt_step_loss(rnn, m_t, x[:, 4], m_next, y[:, 4])
    out["loss"].backward()
    assert m_earlier.grad is None
    assert nonzero(p.grad for p in rnn.updater_parameters())
    # BPTT: only the last step is scored, yet every earlier update output gets gradient
    rnn.zero_grad()
    outputs = record_updates(rnn)
    y_last = torch.full_like(y, -1)
    y_last[:, -1] = y[:, -1]
    bptt_step_loss(rnn, x, y_last)["loss"].backward()
    assert len(outputs) == 6
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)
    assert rnn.initial.grad.abs().sum() > 0


def test_smt_readout_loss_never_reaches_the_updater(models):
    teacher, rnn = models
    x, y = tokens(4, 6)
    m_t, m_next = teacher.encode(x[:, :3]).detach(), teacher.encode(x[:, :4]).detach()
    out = smt_step_loss(rnn, m_t, x[:, 3], m_next, y[:, 3])
    assert not nonzero(grads(out["readout"], rnn.updater_parameters()))
    assert nonzero(grads(out["readout"], rnn.readout_head.parameters()))
    assert not nonzero(grads(out["dyn"], rnn.readout_head.parameters()))
    torch.testing.assert_close(out["loss"], out["dyn"] + out["readout"])


def test_smt_step_accepts_float16_store_labels(models):
    teacher, rnn = models
    x, y = tokens(4, 6)
    m_t, m_next = teacher.encode(x[:, :3]).detach(), teacher.encode(x[:, :4]).detach()
    full = smt_step_loss(rnn, m_t, x[:, 3], m_next, y[:, 3])
    half = smt_step_loss(rnn, m_t.half(), x[:, 3], m_next.half(), y[:, 3])
    assert half["loss"].dtype == torch.float32
    torch.testing.assert_close(half["loss"], full["loss"], atol=1e-2, rtol=1e-2)
    x_pad = x[:, 3].clone()
    x_pad[0] = -1  # past the end of a document: no transition, excluded from the regression
    masked = smt_step_loss(rnn, m_t, x_pad, m_next)["dyn"]
    torch.testing.assert_close(masked, smt_step_loss(rnn, m_t[1:], x[1:, 3], m_next[1:])["dyn"])


def test_all_positions_smt_equals_per_transition_smt(models):
    teacher, rnn = models
    x, y = tokens(2, 6)
    out = smt_all_positions_loss(teacher, rnn, x, y, readout_weight=0.5, encode_batch_size=5)
    with torch.no_grad():
        mem = torch.stack([teacher.encode(x[:, max(0, t - 4) : t + 1]) for t in range(6)], 1)
    per = [smt_step_loss(rnn, mem[:, t], x[:, t + 1], mem[:, t + 1]) for t in range(5)]
    torch.testing.assert_close(out["dyn"], torch.stack([p["dyn"] for p in per]).mean())
    readout = masked_cross_entropy(rnn.readout(mem.flatten(0, 1)), y.flatten())
    torch.testing.assert_close(out["readout"], readout)
    torch.testing.assert_close(out["loss"], out["dyn"] + 0.5 * readout)
    assert not nonzero(grads(out["loss"], teacher.parameters()))


# ----------------------------------------------------------------------------- DMT


def hand_unrolled_dmt(rnn, targets, x, y, cfg, teacher, g):
    td, k = cfg.rollout_len, cfg.pull_every
    m = targets[:, 0]
    pulls, readouts, pulled = [], [], []
    for s in range(1, td + 1):
        m = rnn.update(m.detach(), x[:, s])
        readouts.append(F.cross_entropy(rnn.readout(m.detach()), y[:, s]))
        if s % k == 0:
            pulls.append(F.mse_loss(m, targets[:, s]))
            pulled.append(m)
    pred = torch.stack(pulled, 1)
    tf = TCFG.future_len
    steps = range(k, td + 1, k)
    logits = [teacher.decode(m_s, x[:, s + 1 : s + tf]) for s, m_s in zip(steps, pulled, strict=True)]
    decs = [decoding_loss(lg, y[:, s : s + tf])[0] for s, lg in zip(steps, logits, strict=True)]
    dec = torch.stack(decs).mean()
    unif = uniformity_loss(pred, K, generator=g)
    return {
        "dyn": torch.stack(pulls).mean(),
        "readout": torch.stack(readouts).mean(),
        "dec": dec,
        "unif": unif,
    }


def test_dmt_matches_a_hand_unrolled_loop(models):
    teacher, rnn = models
    teacher.requires_grad_(False)
    cfg = DMTConfig(rollout_len=6, pull_every=2)
    x, y = tokens(3, 6 + TCFG.future_len)
    targets = torch.stack([teacher.encode(x[:, max(0, s - 4) : s + 1]) for s in range(7)], 1)
    out = dmt_step_loss(rnn, targets, x, y, cfg, teacher, torch.Generator().manual_seed(0))
    ref = hand_unrolled_dmt(rnn, targets, x, y, cfg, teacher, torch.Generator().manual_seed(0))
    for name in ("dyn", "readout", "dec", "unif"):
        torch.testing.assert_close(out[name], ref[name], atol=1e-5, rtol=1e-5, msg=name)
    total = 10 * ref["dyn"] + ref["readout"] + ref["dec"] + 0.01 * ref["unif"]
    torch.testing.assert_close(out["loss"], total, atol=1e-5, rtol=1e-5)
    params = list(rnn.parameters())
    for a, b in zip(grads(out["loss"], params), grads(total, params), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def pull_only(models, pull_every: int):
    """A frozen teacher, the RNN, 3 random 8-step trajectories and a DMT config with only the pull loss."""
    teacher, rnn = models
    teacher.requires_grad_(False)
    x, y = tokens(3, 9)
    targets = torch.randn(3, 9, K * D)
    cfg = DMTConfig(rollout_len=8, pull_every=pull_every, readout_weight=0.0, dec_weight=0.0, unif_weight=0.0)
    return teacher, rnn, x, y, targets, cfg


def test_dmt_credit_is_one_step_and_readout_does_not_reach_the_updater(models):
    teacher, rnn, x, y, targets, cfg = pull_only(models, pull_every=8)
    params = list(rnn.updater_parameters())
    got = grads(dmt_step_loss(rnn, targets, x, y, cfg)["loss"], params)
    m = targets[:, 0]
    for s in range(1, 8):
        m = rnn.update(m, x[:, s])  # with grad: a BPTT-style chain through the rollout
    one_step = F.mse_loss(rnn.update(m.detach(), x[:, 8]), targets[:, 8])  # credit for the pulled step only
    through = F.mse_loss(rnn.update(m, x[:, 8]), targets[:, 8])  # credit flowing back through steps 1..7
    expected, bptt = grads(10 * one_step, params), grads(10 * through, params)
    for a, b in zip(got, expected, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(a is not None and (a - b).abs().max() > 1e-4 for a, b in zip(got, bptt, strict=True))
    rnn.zero_grad()
    out = dmt_step_loss(rnn, targets, x, y, DMTConfig(rollout_len=8, pull_every=4), teacher)
    assert not nonzero(grads(out["readout"], rnn.updater_parameters()))
    assert nonzero(grads(out["readout"], rnn.readout_head.parameters()))
    assert nonzero(grads(out["dec"], rnn.updater_parameters()))  # frozen decoder trains the updater
    assert nonzero(grads(out["unif"], rnn.updater_parameters()))


def test_dmt_teacher_forced_pull_is_smts_loss_at_the_pulled_steps(models):
    """teacher_forced_weight: beside the pull from the RNN's own m_{s-1}, one from the encoder's m_{s-1} at the
    same steps; the own pull and every other term stay as they were, and at 0 the loss is unchanged."""
    teacher, rnn, x, y, targets, cfg = pull_only(models, pull_every=4)
    plain = dmt_step_loss(rnn, targets, x, y, cfg)
    forced_cfg = cfg.model_copy(update={"teacher_forced_weight": 2.0})
    out = dmt_step_loss(rnn, targets, x, y, forced_cfg)
    by_hand = torch.stack([F.mse_loss(rnn.update(targets[:, s - 1], x[:, s]), targets[:, s]) for s in (4, 8)]).mean()
    torch.testing.assert_close(out["forced"], by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["dyn"], plain["dyn"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], plain["loss"] + 2.0 * by_hand, atol=1e-5, rtol=1e-5)
    assert plain["forced"] == 0
    params = list(rnn.updater_parameters())
    for a, b in zip(grads(out["loss"], params), grads(plain["loss"] + 2.0 * by_hand, params), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert "teacher_forced_weight" not in cfg.address_json()  # DMT runs made before the option keep their address
    assert "teacher_forced_weight" in forced_cfg.address_json()


def test_dmt_random_pull_phase_pulls_each_rollout_at_its_own_offset(models):
    """pull_phase 'random': rollout i is pulled at r_i, r_i + k, ... (r_i in 1..k from the loss generator), as
    many pulls as 'fixed', and over draws every step of the window is pulled; 'fixed' stays k, 2k, ..."""
    teacher, rnn, x, y, targets, cfg = pull_only(models, pull_every=4)
    assert pull_steps(3, 8, cfg, None, torch.device("cpu")).tolist() == [[4, 8]] * 3
    rand = cfg.model_copy(update={"pull_phase": "random"})
    assert "pull_phase" not in cfg.address_json() and "pull_phase" in rand.address_json()
    steps = pull_steps(3, 8, rand, torch.Generator().manual_seed(7), torch.device("cpu"))
    out = dmt_step_loss(rnn, targets, x, y, rand, generator=torch.Generator().manual_seed(7))
    pulls = []
    for i, row in enumerate(steps.tolist()):
        assert row[1] - row[0] == 4 and 1 <= row[0] <= 4
        m = targets[i : i + 1, 0]
        for s in range(1, row[-1] + 1):
            if s in row:
                pulls.append(F.mse_loss(rnn.update(m.detach(), x[i : i + 1, s]), targets[i : i + 1, s]))
            m = rnn.update(m, x[i : i + 1, s]).detach()
    by_hand = torch.stack(pulls).mean()
    torch.testing.assert_close(out["dyn"], by_hand, atol=1e-5, rtol=1e-5)
    params = list(rnn.updater_parameters())
    for a, b in zip(grads(out["loss"], params), grads(10 * by_hand, params), strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([pull_steps(4, 8, rand, g, torch.device("cpu")).flatten() for _ in range(20)])
    assert set(seen.tolist()) == set(range(1, 9))  # every step of the window, in turn


def test_bptt_matches_a_manual_unroll(models):
    _, rnn = models
    x, y = tokens(2, 5)
    y[0, 2] = -1
    m, ces = rnn.init_memory(2), []
    for t in range(5):
        m = rnn.update(m, x[:, t])
        ces.append(F.cross_entropy(rnn.readout(m), y[:, t].clamp(min=0), reduction="none") * (y[:, t] >= 0))
    torch.testing.assert_close(bptt_step_loss(rnn, x, y)["loss"], torch.stack(ces).sum() / 9)


def test_own_memory_error_counts_wrong_answers_on_scored_targets_only(models):
    """keep_best.metric 'error': 1 - top-1 accuracy over the scored targets, unrolled from the initial memory."""
    from training.steps import own_memory_error

    _, rnn = models
    x, y = tokens(3, 5)
    m, guesses = rnn.init_memory(3), []
    for t in range(5):
        m = rnn.update(m, x[:, t])
        guesses.append(rnn.readout(m).argmax(-1))
    guess = torch.stack(guesses, 1)  # (B, T)
    y = torch.where(torch.arange(5) % 2 == 0, guess, (guess + 1) % rnn.readout(m).shape[-1])  # even t right
    y[0, 0] = -1  # unscored: neither right nor wrong
    assert own_memory_error(rnn, x, y).item() == pytest.approx(6 / 14)


def test_anchors_reach_the_last_position():
    """Tasks scored on their final token (retrieval) need the readout trained on the memory after it."""
    import numpy as np

    from schemas.config import TokensConfig
    from store.crops import DocumentCrops
    from store.tokens import TokensArtifact, build_tokens_artifact
    from training.steps import sample_anchors

    x = torch.zeros(4000, 5, dtype=torch.long)
    x[:, 3:] = -1  # length-3 sequences: anchors 0, 1, 2 all occur, nothing beyond
    anchors = sample_anchors(x, torch.Generator().manual_seed(0))
    assert set(anchors.tolist()) == {0, 1, 2}

    import tempfile

    with tempfile.TemporaryDirectory() as root:
        cfg = TokensConfig(source="synthetic", task="parity", task_params={"length": 3}, num_docs=4)
        crops = DocumentCrops(TokensArtifact.open(build_tokens_artifact(cfg, root).url), "train")
        xs, _ = crops.anchored(np.random.default_rng(0), 2000, before=0, after=1)
        # the anchor is column 0; the last position of a document is the one whose next token is padding
        assert (xs[:, 1] == -1).any() and (xs[:, 0] >= 0).all()


def test_scored_anchors_put_a_scored_target_in_the_decoders_future(tmp_path):
    """anchors='scored' (sparse tasks): every crop's future window holds a target, at every offset in it."""
    import numpy as np

    from schemas.config import TokensConfig
    from store.crops import DocumentCrops
    from store.tokens import TokensArtifact, build_tokens_artifact

    cfg = TokensConfig(source="synthetic", task="retrieval", task_params={"length": 32, "vocab": 4}, num_docs=64)
    crops = DocumentCrops(TokensArtifact.open(build_tokens_artifact(cfg, str(tmp_path)).url), "train")
    before, window = 7, 5
    x, y = crops.near_scored(np.random.default_rng(0), 3000, before, window + 1, window)
    future = y[:, before : before + window]  # y_fut of the anchor at column `before`
    assert (x[:, before] >= 0).all() and ((future >= 0).sum(1) == 1).all()
    offsets = (future >= 0).argmax(1)
    assert set(offsets.tolist()) == set(range(window))  # the answer at j = 0 (memory only) and later
    _, y_uniform = crops.anchored(np.random.default_rng(0), 3000, before, window + 1)
    assert ((y_uniform[:, before : before + window] >= 0).sum(1) == 0).mean() > 0.5  # why: most miss it


def test_the_teacher_stage_places_its_anchors_as_configured(tmp_path):
    """teacher.anchors: `at_scored` puts every anchor on a scored target (L_dec0 scores an answer on every crop),
    `scored` up to future_len-1 before one, `uniform` anywhere (the stage's own sampler, stages/teacher.py)."""
    import numpy as np

    from schemas.config import TeacherModelConfig, TeacherTrainConfig, TokensConfig
    from stages.teacher import training_crops
    from store.crops import DocumentCrops
    from store.tokens import TokensArtifact, build_tokens_artifact

    tokens = TokensConfig(source="synthetic", task="mqar", task_params={"length": 32, "num_pairs": 2, "vocab": 16},
                          num_docs=64)
    train = DocumentCrops(TokensArtifact.open(build_tokens_artifact(tokens, str(tmp_path)).url), "train")
    model = TeacherModelConfig(vocab_size=16, width=16, heads=2, encoder_depth=1, decoder_depth=1, memory_tokens=2,
                               memory_dim=8, context_len=8, future_len=6)
    at_anchor = {}
    for anchors in ("uniform", "scored", "at_scored"):
        cfg = TeacherTrainConfig(model=model, anchors=anchors, run={"batch_size": 2000})
        x, y = training_crops(train, np.random.default_rng(0), cfg)
        assert x.shape == y.shape == (2000, 8 + 6 + 1)  # context, future, the next token of the transition
        at_anchor[anchors] = (y[:, 7] >= 0).mean()  # the target L_dec0 reads
        if anchors != "uniform":
            assert ((y[:, 7:13] >= 0).sum(1) >= 1).all()  # an answer in the decoder's future window
    assert at_anchor["at_scored"] == 1.0 and at_anchor["scored"] < 0.5 and at_anchor["uniform"] < 0.3, at_anchor


def test_chained_crops_keep_the_whole_chain_inside_the_document(tmp_path):
    """teacher.chain: the crop samplers put the chain's last anchor on a real token, uniform or scored."""
    import numpy as np

    from schemas.config import TokensConfig
    from store.crops import DocumentCrops
    from store.tokens import TokensArtifact, build_tokens_artifact

    cfg = TokensConfig(source="synthetic", task="retrieval", task_params={"length": 32, "vocab": 4}, num_docs=64)
    crops = DocumentCrops(TokensArtifact.open(build_tokens_artifact(cfg, str(tmp_path)).url), "train")
    before, chain, window = 7, 4, 5
    for x, _ in (crops.anchored(np.random.default_rng(0), 3000, before, window + chain, chain),
                 crops.near_scored(np.random.default_rng(0), 3000, before, window + chain, window, chain)):
        assert (x[:, before + chain - 1] >= 0).all()
    unchained, _ = crops.anchored(np.random.default_rng(0), 3000, before, window + chain)
    assert (unchained[:, before + chain - 1] < 0).any()  # why: without the bound some chains run off the end


def test_dmt_updater_gets_gradient_under_bf16_autocast(models):
    """The no-grad rollout must not leave autocast weight casts that cut the recomputed step's gradient."""
    _, rnn, x, y, targets, cfg = pull_only(models, pull_every=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dmt_step_loss(rnn, targets, x, y, cfg)["loss"]
    assert nonzero(grads(loss, rnn.updater_parameters()))
