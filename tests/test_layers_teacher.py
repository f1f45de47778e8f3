"""Layers and teacher: shapes, label normalisation, padding invariance, causality, FSQ, window slicing."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_teacher

from models.build import build_teacher
from models.layers import Stack, apply_rotary, normalize_memory, rms_normalize, rotary_tables
from models.teacher import TRIM_STEP, causal_mask, trim_left_padding
from schemas.config import TeacherModelConfig
from training.windows import context_windows, encode_positions, future_slices, gather_span

V, K, D = 11, 4, 16


def tiny_cfg(**overrides) -> TeacherModelConfig:
    base = dict(vocab_size=V, width=32, heads=4, encoder_depth=2, decoder_depth=2, memory_tokens=K, memory_dim=D,
                context_len=8, future_len=4)
    return tiny_teacher(**{**base, **overrides})


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return build_teacher(tiny_cfg()).eval()


def token_rms(m: torch.Tensor) -> torch.Tensor:
    return m.view(m.shape[0], K, D).pow(2).mean(-1).sqrt()


def test_rms_normalize_gives_unit_rms_per_token():
    m = normalize_memory(torch.randn(5, K * D) * 7.0, K)
    torch.testing.assert_close(token_rms(m), torch.ones(5, K), atol=1e-5, rtol=0)
    assert rms_normalize(torch.randn(3, 8)).pow(2).mean(-1).allclose(torch.ones(3), atol=1e-5)


def test_rotary_scores_depend_only_on_position_differences():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    scores = []
    for offset in (0.0, -37.0, 100.0):
        cos, sin = rotary_tables(torch.arange(6) + offset, 8, 10000.0)
        scores.append(apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-1, -2))
    torch.testing.assert_close(scores[0], scores[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores[0], scores[2], atol=1e-4, rtol=1e-4)
    cos, sin = rotary_tables(torch.arange(6) * 2.0, 8, 10000.0)  # different gaps: different scores
    stretched = apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-1, -2)
    assert not torch.allclose(scores[0], stretched)


def test_rotary_turns_each_pair_by_its_angle():
    """Pair (i, i + hd/2) at position p turns by p * base^(-i / (hd/2)), the standard rotary rotation,
    for queries and keys stacked in one tensor as for one alone."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 1, 5, 8)
    positions = torch.arange(5) - 3
    cos, sin = rotary_tables(positions, 8, 10000.0)
    angles = positions[:, None].float() * 10000.0 ** (-torch.arange(4) / 4)
    x1, x2 = x[..., :4], x[..., 4:]
    expected = torch.cat((x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin()), -1)
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected)
    torch.testing.assert_close(apply_rotary(x[1], cos, sin), expected[1])


@pytest.mark.parametrize(
    ("causal", "keep", "masked"),
    [(False, slice(9, None), True), (False, slice(None, 4), False), (True, slice(12, None), False),
     (True, slice(3, None), False), (False, slice(9, None), "rows")],
)
def test_stack_computing_only_the_kept_rows_equals_slicing_the_full_output(causal, keep, masked):
    """The last block computes only the rows kept (encoder registers, updater memory tokens, the
    readout's last row); values and gradients equal the full computation sliced afterwards."""
    torch.manual_seed(0)
    stack = Stack(32, 4, 3, mlp="gelu")
    x = torch.randn(5, 13, 32, requires_grad=True)
    mask = (torch.rand(5, 13) > 0.3).index_fill(1, torch.arange(9, 13), True) if masked else None
    if masked == "rows":  # a row of visible keys per query (the causal encoder's mask)
        mask = causal_mask(mask, 5, 13, x.device)
    full = stack(x, -9, mask, causal)[:, keep]
    # the full path: no trimming, the last block run on every row, then the final norm of the kept rows
    rope = stack.rope(-9, 13, x.device)
    h = x
    for block in stack.blocks:
        h = block(h, rope, mask, causal)
    reference = stack.norm(h)[:, keep]
    kept = stack(x, -9, mask, causal, keep=keep)
    torch.testing.assert_close(kept, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, reference, rtol=1e-5, atol=1e-5)
    g_kept = torch.autograd.grad(kept.square().sum(), [x, *stack.parameters()])
    g_ref = torch.autograd.grad(reference.square().sum(), [x, *stack.parameters()])
    for a, b in zip(g_kept, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_teacher_shapes_and_label_normalisation(teacher):
    x = torch.randint(0, V, (3, 8))
    m = teacher.encode(x)
    assert m.shape == (3, K * D)
    torch.testing.assert_close(token_rms(m), torch.ones(3, K), atol=1e-4, rtol=0)
    assert teacher.decode(m, x[:, :5]).shape == (3, 6, V)
    assert teacher.decode(m, x[:, :0]).shape == (3, 1, V)
    torch.testing.assert_close(teacher.readout(m), teacher.decode(m, x[:, :3])[:, 0], atol=1e-5, rtol=1e-5)


def test_padding_never_changes_the_memory_of_the_real_tokens(teacher):
    real = torch.randint(0, V, (2, 5))
    reference = teacher.encode(real)
    for pads in (1, 3, 9):
        padded = torch.cat((torch.full((2, pads), -1), real), 1)
        torch.testing.assert_close(teacher.encode(padded), reference, atol=1e-5, rtol=1e-5)
    # mixed padding in one batch: each row as if alone
    batch = torch.tensor([[-1, -1, -1, 1, 2], [-1, 3, 4, 5, 6], [7, 8, 9, 10, 0]])
    alone = [teacher.encode(row[row >= 0][None]) for row in batch]
    torch.testing.assert_close(teacher.encode(batch), torch.cat(alone), atol=1e-5, rtol=1e-5)
    # the check can fail: a changed real token or one more real token does change the memory
    changed = real.clone()
    changed[:, 0] = (changed[:, 0] + 1) % V
    assert (teacher.encode(changed) - reference).abs().max() > 1e-3
    longer = torch.cat((torch.zeros(2, 1, dtype=torch.long), real), 1)
    assert (teacher.encode(longer) - reference).abs().max() > 1e-3


def test_common_left_padding_is_cut_and_full_batches_run_unmasked(teacher):
    assert TRIM_STEP == 16
    real = torch.randint(0, V, (2, 5))
    for pads, width, still_padded in ((16, 5, False), (17, 6, True), (40, 13, True), (0, 5, False)):
        padded = torch.cat((torch.full((2, pads), -1), real), 1)
        trimmed, left = trim_left_padding(padded)
        assert trimmed.shape == (2, width) and left is still_padded
        torch.testing.assert_close(trimmed[:, -5:], real, atol=0, rtol=0)  # never cuts a real token
    # a row with fewer pads keeps the batch's columns; a right pad (teacher anchors past the end) keeps the mask
    mixed = torch.cat((torch.full((2, 20), -1), real), 1)
    mixed[1, 2:20] = 3
    assert trim_left_padding(mixed)[0].shape == (2, 25)
    right = torch.cat((real, torch.full((2, 1), -1)), 1)
    kept, left = trim_left_padding(right)
    assert kept.shape == right.shape and left
    assert trim_left_padding(torch.full((3, 32), -1))[0].shape == (3, 0)
    # and the memory is the same as with every padding column kept
    for pads in (16, 17, 40):
        padded = torch.cat((torch.full((2, pads), -1), real), 1)
        torch.testing.assert_close(teacher.encode(padded), teacher.encode(real), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        teacher.encode(torch.full((1, 32), -1)), teacher.encode(torch.full((1, 3), -1)), atol=1e-5, rtol=1e-5
    )


def test_fully_padded_window_is_finite(teacher):
    m = teacher.encode(torch.full((2, 8), -1))
    assert torch.isfinite(m).all()


def test_decoder_is_causal(teacher):
    m = teacher.encode(torch.randint(0, V, (2, 8)))
    x_fut = torch.randint(0, V, (2, 6))
    base = teacher.decode(m, x_fut)
    for j in range(6):
        changed = x_fut.clone()
        changed[:, j] = (changed[:, j] + 1) % V
        logits = teacher.decode(m, changed)
        # x_fut[:, j] sits at output index j+1: outputs 0..j cannot see it, output j+1 does
        torch.testing.assert_close(logits[:, : j + 1], base[:, : j + 1], atol=1e-5, rtol=1e-5)
        assert (logits[:, j + 1] - base[:, j + 1]).abs().max() > 1e-4


def test_fsq_quantises_with_straight_through_gradient():
    torch.manual_seed(0)
    teacher = build_teacher(tiny_cfg(fsq_step=0.5))
    m = teacher.encode(torch.randint(0, V, (4, 8)))
    torch.testing.assert_close(m / 0.5, torch.round(m / 0.5), atol=1e-5, rtol=0)
    m.pow(2).sum().backward()
    grad = teacher.encoder.registers.grad
    assert grad is not None and grad.abs().sum() > 0


def test_width_equal_to_memory_dim_skips_projection():
    teacher = build_teacher(tiny_cfg(width=16, heads=2, memory_dim=16))
    m = teacher.encode(torch.randint(0, V, (2, 8)))
    assert m.shape == (2, K * 16)
    assert teacher.decode(m, torch.randint(0, V, (2, 3))).shape == (2, 4, V)


def test_windows_match_a_python_reference():
    torch.manual_seed(0)
    x = torch.randint(0, V, (3, 10))
    y = torch.randint(-1, V, (3, 10))
    ends = torch.tensor([[0, 4, 9], [2, 3, 7], [9, 9, 1]])

    def ref_span(row, start, length):
        return [row[p].item() if 0 <= p < len(row) else -1 for p in range(start, start + length)]

    ctx = context_windows(x, ends, 6)
    assert ctx.shape == (3, 3, 6)
    x_fut, y_fut = future_slices(x, y, ends, 4)
    assert x_fut.shape == (3, 3, 3) and y_fut.shape == (3, 3, 4)
    for b in range(3):
        for i in range(3):
            e = ends[b, i].item()
            assert ctx[b, i].tolist() == ref_span(x[b], e - 5, 6)
            assert x_fut[b, i].tolist() == ref_span(x[b], e + 1, 3)
            assert y_fut[b, i].tolist() == ref_span(y[b], e, 4)
    assert gather_span(x, torch.tensor([-3, 8, 20]), 4)[2].tolist() == [-1] * 4


def test_encode_positions_matches_single_windows(teacher):
    x = torch.randint(0, V, (2, 10))
    ends = torch.arange(10).expand(2, 10)
    memories = encode_positions(teacher, x, ends, batch_size=7)
    assert memories.shape == (2, 10, K * D)
    expected = teacher.encode(x[1:2, max(0, 6 - 7) : 7])  # window ending at 6, shorter than Tc=8
    torch.testing.assert_close(memories[1, 6], expected[0], atol=1e-5, rtol=1e-5)


def test_gelu_mlp_has_two_thirds_of_swiglus_weights_and_only_it_moves_the_address():
    """`mlp: gelu` (the reference's block MLP) is a real choice: the blocks hold the plain MLP, with 2 of
    SwiGLU's 3 matrices, and it enters the teacher's address, while the default leaves old addresses as they were."""
    from models.layers import GeluMLP, SwiGLU
    from schemas.config import TeacherTrainConfig

    swiglu, gelu = (TeacherModelConfig(vocab_size=16, width=32, heads=2, encoder_depth=1, decoder_depth=1,
                                       memory_tokens=2, memory_dim=32, mlp=kind) for kind in ("swiglu", "gelu"))
    blocks = {kind: [b.mlp for b in build_teacher(c).encoder.stack.blocks] for kind, c in (("s", swiglu), ("g", gelu))}
    assert all(isinstance(m, SwiGLU) for m in blocks["s"]) and all(isinstance(m, GeluMLP) for m in blocks["g"])
    weights = {k: sum(p.numel() for p in v[0].parameters()) for k, v in blocks.items()}
    assert weights["g"] * 3 == weights["s"] * 2
    assert "mlp" not in TeacherTrainConfig(model=swiglu).address_json()["model"]
    assert TeacherTrainConfig(model=gelu).address_json()["model"]["mlp"] == "gelu"
    out = build_teacher(gelu)(torch.randint(0, 16, (3, 5)), torch.randint(0, 16, (3, 4)))
    assert out.shape == (3, 5, 16) and torch.isfinite(out).all()


def test_a_causal_block_refuses_to_compute_rows_other_than_its_last_alone():
    """Only the last row of a causal block sees every key; computing other rows alone would drop the mask."""
    stack = Stack(16, 2, 1)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="last row"):
        stack.blocks[0](x, stack.rope(0, 5, x.device), causal=True, rows=slice(2, None))
    stack.blocks[0](x, stack.rope(0, 5, x.device), causal=True, rows=slice(4, None))  # the last row is fine


def _encoder_rows(teacher, x: torch.Tensor) -> torch.Tensor:
    """Every output row of the encoder's stack (context tokens, then registers), for unpadded x."""
    enc = teacher.encoder
    b, tc = x.shape
    h = torch.cat((enc.embed(x), enc.registers.expand(b, enc.cfg.memory_tokens, -1)), 1)
    mask = causal_mask(None, b, h.shape[1], x.device) if enc.cfg.encoder_attention == "causal" else None
    return enc.stack(h, -tc, mask)


def test_a_causal_encoder_hides_later_tokens_from_earlier_ones_and_shows_the_registers_all():
    """`encoder_attention: causal`: context token i sees tokens <= i, the registers (last) see the whole context;
    pads still change nothing; the default stays bidirectional and keeps its address."""
    from schemas.config import TeacherTrainConfig

    torch.manual_seed(0)
    causal = build_teacher(tiny_cfg(encoder_attention="causal")).eval()
    bidirectional = build_teacher(tiny_cfg()).eval()
    bidirectional.load_state_dict(causal.state_dict())  # the same weights: only the mask differs
    x = torch.randint(0, V, (2, 7))
    torch.testing.assert_close(causal.encode(x), rms_normalize(causal.encoder.proj(_encoder_rows(causal, x)[:, 7:])
                                                               ).flatten(1), atol=1e-5, rtol=1e-5)
    assert (causal.encode(x) - bidirectional.encode(x)).abs().max() > 1e-3
    for teacher, sees_later in ((causal, False), (bidirectional, True)):
        base = _encoder_rows(teacher, x)
        for j in (2, 5):
            changed = x.clone()
            changed[:, j] = (changed[:, j] + 1) % V
            rows = _encoder_rows(teacher, changed)
            assert bool((rows[:, :j] - base[:, :j]).abs().max() > 1e-4) is sees_later
            assert (rows[:, j:] - base[:, j:]).abs().amax(-1).min() > 1e-4  # token j and every row after it moved
    batch = torch.tensor([[-1, -1, -1, 1, 2], [-1, 3, 4, 5, 6], [7, 8, 9, 10, 0]])  # each row as if alone
    alone = [causal.encode(row[row >= 0][None]) for row in batch]
    torch.testing.assert_close(causal.encode(batch), torch.cat(alone), atol=1e-5, rtol=1e-5)
    padded = torch.cat((torch.full((2, 17), -1), x), 1)
    torch.testing.assert_close(causal.encode(padded), causal.encode(x), atol=1e-5, rtol=1e-5)
    assert "encoder_attention" not in TeacherTrainConfig(model=tiny_cfg()).address_json()["model"]
    assert TeacherTrainConfig(model=tiny_cfg(encoder_attention="causal")).address_json()["model"][
        "encoder_attention"] == "causal"


def test_a_stack_at_positions_per_row_equals_the_stack_at_the_same_offset():
    """`Stack(positions=...)` (one row of rotary positions per sequence) is the offset path when every row is the
    same, and each row turns by its own positions when they differ."""
    torch.manual_seed(0)
    stack = Stack(32, 4, 2).eval()
    x = torch.randn(3, 6, 32)
    same = torch.arange(-2, 4).expand(3, 6)
    torch.testing.assert_close(stack(x, positions=same, keep=slice(2, None)), stack(x, -2, keep=slice(2, None)))
    shifted = same + torch.tensor([[0], [5], [0]])
    out = stack(x, positions=shifted)
    torch.testing.assert_close(out[1], stack(x[1:2], 3)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], stack(x[0:1], -2)[0], atol=1e-5, rtol=1e-5)


def test_a_persistent_encoder_counts_positions_from_the_first_token_and_reads_the_last_token_into_memory():
    """`encoder_memory: persistent`: real tokens at rotary positions 0, 1, ... whatever the padding, registers at
    Tc; the memory is the first K-1 registers and the last real token's row (the last register's for an empty
    context); a row's memory is its own alone; relative stays the default and keeps its address."""
    from schemas.config import TeacherTrainConfig

    torch.manual_seed(0)
    teacher = build_teacher(tiny_cfg(encoder_attention="causal", encoder_memory="persistent")).eval()
    enc = teacher.encoder
    seen = []
    stack_forward = enc.stack.forward
    enc.stack.forward = lambda *a, **kw: seen.append(kw["positions"]) or stack_forward(*a, **kw)
    batch = torch.tensor([[-1, -1, -1, 1, 2], [-1, 3, 4, 5, 6], [7, 8, 9, 10, 0]])
    m = teacher.encode(batch)
    assert seen[0].tolist() == [[-3, -2, -1, 0, 1, 8, 8, 8, 8], [-1, 0, 1, 2, 3, 8, 8, 8, 8],
                                [0, 1, 2, 3, 4, 8, 8, 8, 8]]
    enc.stack.forward = stack_forward

    x = batch[2:]
    h = torch.cat((enc.embed(x), enc.registers.expand(1, K, -1)), 1)
    rows = enc.stack(h, key_mask=causal_mask(None, 1, 5 + K, x.device),
                     positions=torch.tensor([[0, 1, 2, 3, 4, *[8] * K]]))
    expected = rms_normalize(enc.proj(torch.cat((rows[:, 5:5 + K - 1], rows[:, 4:5]), 1))).flatten(1)
    torch.testing.assert_close(m[2:], expected, atol=1e-5, rtol=1e-5)
    empty = teacher.encode(torch.full((2, 8), -1))
    h = enc.registers[None]
    rows = enc.stack(h, key_mask=causal_mask(None, 1, K, h.device), positions=torch.full((1, K), 8))
    torch.testing.assert_close(empty, rms_normalize(enc.proj(rows)).flatten(1).expand(2, -1), atol=1e-5, rtol=1e-5)
    cut = teacher.encode(torch.full((2, TRIM_STEP), -1))  # every column cut: the registers alone reach the stack
    torch.testing.assert_close(cut, empty, atol=1e-5, rtol=1e-5)
    alone = [teacher.encode(row[row >= 0][None]) for row in batch]
    torch.testing.assert_close(m, torch.cat(alone), atol=1e-5, rtol=1e-5)
    mixed = torch.cat((torch.full((1, 5), -1), batch[:1]))  # an empty context beside a real one
    torch.testing.assert_close(teacher.encode(mixed), torch.cat((empty[:1], m[:1])), atol=1e-5, rtol=1e-5)

    relative = build_teacher(tiny_cfg(encoder_attention="causal")).eval()
    relative.load_state_dict(teacher.state_dict())  # the same weights: only positions and the memory's rows differ
    assert (relative.encode(batch) - m).abs().max() > 1e-3
    causal = tiny_cfg(encoder_attention="causal")
    assert "encoder_memory" not in TeacherTrainConfig(model=causal).address_json()["model"]
    assert TeacherTrainConfig(model=tiny_cfg(encoder_attention="causal", encoder_memory="persistent")).address_json()[
        "model"]["encoder_memory"] == "persistent"
    with pytest.raises(ValueError, match="needs encoder_attention 'causal'"):
        tiny_cfg(encoder_memory="persistent")
    with pytest.raises(ValueError, match="memory_tokens >= 2"):
        tiny_cfg(encoder_attention="causal", encoder_memory="persistent", memory_tokens=1)


def _register_scores(teacher, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    """The first block's attention scores of the last register (the last query row) against every key."""
    captured = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        captured.append(q[..., -1:, :] @ k.transpose(-1, -2))
        return original(q, k, v, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        teacher.encode(x)
    return captured[0]


def test_a_persistent_encoder_reads_an_early_token_the_same_however_many_follow(monkeypatch):
    """What makes the memory persistent: with positions counted from the first token and the registers at one fixed
    position, a register's attention score against a context token does not move when tokens are appended (the
    relative encoder's does: the distance between them grows)."""
    torch.manual_seed(0)
    x = torch.randint(0, V, (1, 7))
    moved = {}
    for memory in ("relative", "persistent"):
        teacher = build_teacher(tiny_cfg(encoder_attention="causal", encoder_memory=memory)).eval()
        short, long = (_register_scores(teacher, x[:, :t], monkeypatch)[..., 0, :3] for t in (4, 7))
        moved[memory] = (short - long).abs().max().item()  # against the first three tokens
    assert moved["persistent"] < 1e-5
    assert moved["relative"] > 1e-3
