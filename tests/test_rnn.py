"""RNN variants: shapes, normalised updates, readout copies, construction before a checkpoint load."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_teacher

from models.build import build_rnn, build_teacher
from schemas.config import RNNConfig
from schemas.registry import RNN_VARIANTS as RNN_KINDS

V, K, D = 9, 4, 8
TCFG = tiny_teacher(vocab_size=V, memory_tokens=K, memory_dim=D, context_len=6, future_len=3)


def rnn_cfg(kind: str, readout: str = "mlp") -> RNNConfig:
    return RNNConfig(kind=kind, width=16, depth=2, heads=2, hidden=24, readout=readout)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher(TCFG)


def assert_unit_token_rms(m: torch.Tensor) -> None:
    rms = m.view(m.shape[0], K, D).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)


@pytest.mark.parametrize("readout", ["teacher_decoder", "mlp"])
@pytest.mark.parametrize("kind", sorted(RNN_KINDS))
def test_every_variant_has_the_interface_shapes_and_normalised_updates(teacher, kind, readout):
    torch.manual_seed(0)
    rnn = build_rnn(rnn_cfg(kind, readout), TCFG, teacher)
    assert rnn.memory_size == K * D
    m0 = rnn.init_memory(3)
    assert m0.shape == (3, K * D)
    assert_unit_token_rms(m0)
    m = teacher.encode(torch.randint(0, V, (3, 6)))
    x = torch.tensor([0, V - 1, -1])  # -1 (padding) must embed, not index out of range
    m1 = rnn.update(m, x)
    assert m1.shape == (3, K * D) and torch.isfinite(m1).all()
    assert_unit_token_rms(m1)
    assert not torch.allclose(m1, m), "update must change the memory"
    m2 = rnn.update(m1 * 5.0, torch.tensor([1, 2, 3]))  # unnormalised input still gives labels' scale
    assert_unit_token_rms(m2)
    assert rnn.readout(m1).shape == (3, V)


def test_update_depends_on_the_token(teacher):
    for kind in RNN_KINDS:
        torch.manual_seed(1)
        rnn = build_rnn(rnn_cfg(kind), TCFG, teacher)
        m = rnn.init_memory(2)
        a, b = rnn.update(m, torch.tensor([1, 1])), rnn.update(m, torch.tensor([1, 2]))
        torch.testing.assert_close(a[0], b[0])
        assert (a[1] - b[1]).abs().max() > 1e-4, kind


def test_teacher_decoder_readout_is_an_independent_copy(teacher):
    rnn = build_rnn(rnn_cfg("transformer", "teacher_decoder"), TCFG, teacher)
    m = teacher.encode(torch.randint(0, V, (2, 6)))
    torch.testing.assert_close(rnn.readout(m), teacher.readout(m))
    with torch.no_grad():
        next(rnn.readout_head.parameters()).add_(1.0)
    assert not torch.allclose(rnn.readout(m), teacher.readout(m)), "readout must not share weights"


def test_rnn_without_teacher_loads_a_checkpoint(teacher):
    torch.manual_seed(0)
    trained = build_rnn(rnn_cfg("gru", "teacher_decoder"), TCFG, teacher)
    fresh = build_rnn(rnn_cfg("gru", "teacher_decoder"), TCFG, None)
    assert fresh.state_dict().keys() == trained.state_dict().keys()
    m = trained.init_memory(2)
    assert not torch.allclose(fresh.readout(m), trained.readout(m))
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh.readout(m), trained.readout(m))


def test_updater_parameters_exclude_the_readout_head(teacher):
    rnn = build_rnn(rnn_cfg("mlp", "teacher_decoder"), TCFG, teacher)
    updater = {id(p) for p in rnn.updater_parameters()}
    head = {id(p) for p in rnn.readout_head.parameters()}
    assert updater and head and not updater & head
    assert updater | head == {id(p) for p in rnn.parameters()}


def test_lstm_memory_is_its_cell_state():
    rnn = build_rnn(rnn_cfg("lstm"), TCFG)
    m = torch.randn(3, K * D)
    x = torch.tensor([1, 2, -1])
    i, f, g = rnn.gates(torch.cat((rnn.embed(x), torch.tanh(m)), -1)).chunk(3, dim=-1)
    expected = torch.sigmoid(f) * m + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(rnn.step(m, x), expected)
    with torch.no_grad():  # a shut input gate and an open forget gate keep the memory as it is
        rnn.gates.bias[: K * D].fill_(-1e4)
        rnn.gates.bias[K * D : 2 * K * D].fill_(1e4)
    torch.testing.assert_close(rnn.step(m, x), m)


def test_concurrent_seeded_builds_equal_sequential_ones():
    """The flow builds its variants in concurrent threads; each must get the init of its own seed."""
    import threading

    from models.build import seeded_init

    variants = [RNNConfig(kind=k, width=8, hidden=16, readout="mlp") for k in ("gru", "lstm", "gated_linear")]

    def build(i: int) -> dict[str, torch.Tensor]:
        with seeded_init(i):
            return build_rnn(variants[i % 3], TCFG).state_dict()

    reference = [build(i) for i in range(6)]
    results: dict[int, list] = {i: [] for i in range(6)}

    def work(i: int) -> None:
        for _ in range(3):
            results[i].append(build(i))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i, built in results.items():
        assert len(built) == 3
        assert all(torch.equal(b[k], reference[i][k]) for b in built for k in reference[i])
    assert not torch.equal(reference[0]["initial"], reference[3]["initial"])  # the seed matters


def test_seeded_build_is_not_shifted_by_unseeded_builds_in_other_threads():
    """Loaders rebuild modules before loading weights (load_teacher, load_rnn), drawing from torch's
    global generator: a loader running beside a seeded build must not consume the seeded draws (this
    moved a demo BPTT student between two runs of the same config)."""
    import threading

    from models.build import seeded_init

    variant = RNNConfig(kind="transformer", width=16, depth=1, heads=2, readout="mlp")

    def seeded() -> dict[str, torch.Tensor]:
        with seeded_init(7):
            return build_rnn(variant, TCFG).state_dict()

    reference = seeded()
    stop = threading.Event()

    def loader() -> None:
        while not stop.is_set():
            build_teacher(TCFG)  # what load_teacher does before reading the weights
            build_rnn(RNNConfig(kind="gru", width=8, hidden=16, readout="mlp"), TCFG)

    workers = [threading.Thread(target=loader) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        built = [seeded() for _ in range(20)]
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert all(torch.equal(b[k], reference[k]) for b in built for k in reference)


def test_registry_is_what_the_config_accepts_and_every_entry_builds():
    """schemas/registry.py is the one list: the config allows exactly its names, each resolves."""
    import typing

    from models.rnn import RNN
    from schemas.config import RNNConfig, SourceKind
    from schemas.registry import SOURCES, resolve

    assert set(typing.get_args(RNNConfig.model_fields["kind"].annotation)) == set(RNN_KINDS)
    assert set(typing.get_args(SourceKind)) == set(SOURCES)
    from schemas.config import TaskName
    from sources.synthetic import TASKS

    assert set(typing.get_args(TaskName)) == set(TASKS)  # every synthetic task can be named in a config
    for path in RNN_KINDS.values():
        assert issubclass(resolve(path), RNN), path
    for path in SOURCES.values():
        assert callable(resolve(path)), path
    with pytest.raises(ValueError, match="kind"):
        RNNConfig(kind="not_registered")


def test_every_label_codec_round_trips_and_is_a_config_value():
    import typing

    import numpy as np

    from schemas.config import LabelSpec
    from schemas.registry import LABEL_CODECS
    from store.label_codecs import codec_for

    assert set(typing.get_args(LabelSpec.model_fields["dtype"].annotation)) == set(LABEL_CODECS)
    memory = np.random.default_rng(0).standard_normal((3, 5, 4 * 8)).astype(np.float32)  # (..., Z), K=4
    for name in LABEL_CODECS:
        codec = codec_for(name)
        stored, scale = codec.encode(memory, 4)
        assert stored.dtype == np.dtype(codec.stored_dtype) and (scale is not None) == codec.scaled
        back = codec.decode(stored, scale)
        assert back.dtype == np.float32 and back.shape == memory.shape
        assert np.abs(back - memory).max() < 0.02 * np.abs(memory).max(), name  # both keep ~2 digits


@pytest.mark.slow
def test_compiled_inference_step_reads_like_the_eager_one(teacher):
    """The torch.compile path (fused kernels, for generation at small batch) gives the eager memories
    and logits over a 12-token read, within 1e-5: same update, same readout, nothing dropped."""
    torch.manual_seed(0)
    rnn = build_rnn(rnn_cfg("transformer", "teacher_decoder"), TCFG, teacher).requires_grad_(False)
    eager, compiled = rnn.inference_step(), rnn.inference_step(compiled=True)
    x = torch.randint(0, V, (2, 12))
    m_e = m_c = rnn.init_memory(2)
    with torch.no_grad():
        for t in range(12):
            (m_e, logits_e), (m_c, logits_c) = eager(m_e, x[:, t]), compiled(m_c, x[:, t])
            torch.testing.assert_close(m_c, m_e, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(logits_c, logits_e, rtol=1e-5, atol=1e-5)
    assert not torch.equal(m_e, rnn.init_memory(2))  # the read moved the memory
