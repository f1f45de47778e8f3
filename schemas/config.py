"""Typed configs for every stage: YAML in, validated, every field defaulted and described.

Numbers default to the published values of docs/method.md; `configs/demo.yaml` shrinks them for a CPU.
Unknown keys are errors (`extra="forbid"`), so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.registry import BLOCK_MLPS, LABEL_CODECS, RNN_VARIANTS, SOURCES

SCHEMA_VERSION = 1  # bump when an artifact layout or manifest field changes incompatibly


class StrictModel(BaseModel):
    """Base for configs: unknown keys are rejected, models are immutable and hashable as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ADDED_LATER: ClassVar[frozenset[str]] = frozenset()  # fields left out of addresses while at their default

    def address_json(self) -> dict[str, Any]:
        """The config as it enters an artifact's address (store/plans.py): fields added after artifacts
        were made are left out while they keep their default, so those artifacts keep their addresses."""
        unset = {k for k in self.ADDED_LATER if getattr(self, k) == type(self).model_fields[k].default}
        out = self.model_dump(mode="json", exclude=unset)
        for name in out:  # nested configs leave out their own later fields too
            value = getattr(self, name)
            if isinstance(value, StrictModel):
                out[name] = value.address_json()
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, StrictModel) for v in value):
                out[name] = [v.address_json() for v in value]
        return out


# ----------------------------------------------------------------------------- models


MLPKind = Literal[tuple(BLOCK_MLPS)]  # type: ignore[valid-type]  # schemas/registry.py


class TeacherModelConfig(StrictModel):
    """Shape of the Transformer encoder-decoder teacher (docs/method.md section 3)."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"mlp", "encoder_attention", "encoder_memory"})

    vocab_size: int = Field(256, ge=2, description="token vocabulary V; tokens are ints in [0, V)")
    width: int = Field(256, ge=8, description="Transformer width of encoder and decoder")
    heads: int = Field(8, ge=1, description="attention heads")
    encoder_depth: int = Field(8, ge=1, description="encoder blocks")
    encoder_attention: Literal["bidirectional", "causal"] = Field(
        "bidirectional", description="bidirectional (the method's encoder), or causal: each context token sees "
        "the ones before it, the registers see the whole context")
    encoder_memory: Literal["relative", "persistent"] = Field(
        "relative", description="how the encoder writes memory. relative (the method's): rotary positions count back "
        "from the last context token and the K registers follow it, so what a register reads of a token changes "
        "with every token appended. persistent (causal encoder only): positions count from the window's first "
        "token and the registers sit at one fixed position (context_len), so a register reads an early token the "
        "same however many follow (while the document fits in context_len: a longer one's window slides, and its "
        "positions with it); the memory is the first K-1 registers plus the last context token's output (the "
        "last register's for an empty context), which holds what the newest token asks. Memories that updaters "
        "carry over many steps: docs/comparison.md, 'A memory that moves with every token'")
    decoder_depth: int = Field(4, ge=1, description="causal decoder blocks")
    mlp_ratio: int = Field(4, ge=1, description="hidden size of block MLPs as a multiple of width")
    mlp: MLPKind = Field("swiglu", description="block MLP: swiglu (gated), or gelu (the reference's, 2/3 the FLOPs)")
    memory_tokens: int = Field(16, ge=1, description="K: memory tokens (encoder registers)")
    memory_dim: int = Field(256, ge=4, description="D: width of one memory token; Z = K * D")
    context_len: int = Field(256, ge=1, description="Tc: encoder context window (tokens)")
    future_len: int = Field(64, ge=1, description="Tf: future tokens the decoder predicts")
    fsq_step: float | None = Field(None, gt=0, description="finite scalar quantisation grid step; null = off")
    rope_base: float = Field(10000.0, gt=0, description="rotary position embedding base")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TeacherModelConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self

    @model_validator(mode="after")
    def _persistent_memory_needs_a_causal_encoder(self) -> TeacherModelConfig:
        if self.encoder_memory == "persistent" and self.encoder_attention != "causal":
            raise ValueError("encoder_memory 'persistent' needs encoder_attention 'causal' (with bidirectional "
                             "attention every context token changes when one is appended)")
        if self.encoder_memory == "persistent" and self.memory_tokens < 2:
            raise ValueError("encoder_memory 'persistent' needs memory_tokens >= 2 (registers and the last token)")
        return self

    @property
    def memory_size(self) -> int:
        """Z = K * D, the flat memory size in floats."""
        return self.memory_tokens * self.memory_dim


RNNKind = Literal[tuple(RNN_VARIANTS)]  # type: ignore[valid-type]  # schemas/registry.py


class RNNConfig(StrictModel):
    """One RNN variant: an updater (Z, token) -> Z plus a readout Z -> logits (docs/method.md section 5)."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"mlp", "seed"})

    kind: RNNKind = Field("transformer", description="updater architecture")
    name: str | None = Field(None, description="label in reports; defaults to kind")
    width: int = Field(256, ge=8, description="transformer width / token embedding size of the cell")
    depth: int = Field(8, ge=1, description="transformer blocks, or MLP hidden layers")
    heads: int = Field(8, ge=1, description="attention heads (transformer updater)")
    hidden: int = Field(1024, ge=8, description="hidden size of MLP updater / readout head")
    readout: Literal["teacher_decoder", "mlp"] = Field(
        "teacher_decoder", description="copy the teacher's decoder as readout, or train an MLP head"
    )
    mlp: MLPKind = Field("swiglu", description="block MLP of the transformer updater: swiglu or gelu")
    seed: int = Field(0, ge=0, description="student seed: added to the run seed of its distill, DMT and BPTT "
                      "stages (init and data order); the teacher and label store stay shared")

    @property
    def base_label(self) -> str:
        """The variant's name without its seed: what the report groups seeds under."""
        return self.name or self.kind

    @property
    def label(self) -> str:
        """Unique per student: `gru`, or `gru@seed1` for another seed of the same variant."""
        return f"{self.base_label}@seed{self.seed}" if self.seed else self.base_label


# ----------------------------------------------------------------------------- optimisation


class OptimConfig(StrictModel):
    """AdamW with linear warm-up, then constant or cosine decay."""

    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(1.0, gt=0, description="global grad-norm clip")
    warmup_frac: float = Field(0.01, ge=0, le=1, description="fraction of steps with linear warm-up")
    schedule: Literal["constant", "cosine"] = Field("constant", description="after warm-up")


class RunConfig(StrictModel):
    """Where and how a training loop runs."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"cpu_bf16", "flush_denormal"})

    steps: int = Field(150_000, ge=0, description="optimiser steps")
    batch_size: int = Field(128, ge=1, description="sequences (or transitions) per step, per process")
    device: str = Field("auto", description="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1' …")
    amp: bool = Field(True, description="bf16 autocast on CUDA (fp32 on a CPU unless cpu_bf16)")
    cpu_bf16: bool = Field(
        False, description="bf16 autocast on a CPU too: faster on CPUs with bf16 matrix instructions (AVX512-BF16, "
        "AMX), slower on others; numerics change within bf16 rounding (README, Benchmarks)",
    )
    compile: bool = Field(False, description="torch.compile the Transformer blocks (and a DMT rollout), any device")
    flush_denormal: bool = Field(
        False, description="flush denormal floats to zero while training: on a CPU several times faster where few "
        "positions are scored (retrieval, MQAR: gradients decay to denormals); values below 1.2e-38 become zero, so "
        "later figures can differ in their last bits. Needs threads: 1 on a CPU (training/denormals.py)",
    )
    seed: int = Field(0, description="seed for init, sampling and shuffling")
    log_every: int = Field(50, ge=1, description="steps between logged metrics")
    checkpoint_every: int = Field(1000, ge=1, description="steps between resumable checkpoints")
    max_seconds: float | None = Field(None, gt=0, description="stop after this wall-clock budget")


# ----------------------------------------------------------------------------- stages


SourceKind = Literal[tuple(SOURCES)]  # type: ignore[valid-type]  # schemas/registry.py
# sources/synthetic.py TASKS (tests/test_rnn.py checks they agree)
TaskName = Literal["retrieval", "copy", "stack", "keys_values", "mqar", "modular", "parity"]


class TokensConfig(StrictModel):
    """Where tokens come from and how documents are split into train/test."""

    source: SourceKind = Field("synthetic", description="reader to use")
    url: str | None = Field(None, description="fsspec URL or glob of the input files (not for synthetic)")
    task: TaskName = Field("retrieval", description="synthetic task")
    task_params: dict[str, Any] = Field(default_factory=dict, description="task keyword arguments")
    num_docs: int = Field(2000, ge=1, description="synthetic documents to generate")
    text_column: str = Field("text", description="column / JSON key holding text (jsonl, parquet)")
    non_ascii: Literal["replace", "drop"] = Field("replace", description="bytes >= 128 -> '?' or removed")
    test_fraction: float = Field(0.05, ge=0, lt=1, description="documents held out for evaluation")
    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"test_url"})
    test_url: str | None = Field(
        None, description="a separate held-out set read by the same source (MNIST t10k, a held-out book, a "
        "test Parquet file): then every document of `url` trains, every one of `test_url` tests, and "
        "test_fraction is not used"
    )
    seed: int = Field(0, description="seed of synthetic data and of the split")
    max_docs: int | None = Field(None, ge=1, description="read at most this many documents")
    vocab_size: int | None = Field(
        None, ge=2, le=32767, description="npy: tokens must lie in [0, V); null = max token + 1"
    )
    sketch_threshold: int = Field(128, ge=1, le=255, description="sketch_idx: pixel >= this is ink")
    chunk_len: int | None = Field(
        None, ge=1, description="cut file documents into pieces of at most this many tokens; null = whole"
    )

    @model_validator(mode="after")
    def _url_needed(self) -> TokensConfig:
        if self.source != "synthetic" and not self.url:
            raise ValueError(f"source '{self.source}' needs a url")
        if self.source == "synthetic" and self.test_url:
            raise ValueError("test_url is for file sources; synthetic tasks split by test_fraction")
        return self


class TeacherTrainConfig(StrictModel):
    """Teacher training: joint L_dec + L_dyn + L_unif with a reference Transformer updater."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"anchors", "init_from", "chain", "dyn_rollout"})

    model: TeacherModelConfig = Field(default_factory=TeacherModelConfig, description="teacher shape")
    updater: RNNConfig = Field(default_factory=RNNConfig, description="reference updater for L_dyn")
    run: RunConfig = Field(default_factory=RunConfig, description="loop settings")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimiser")
    dec_weight: float = Field(1.0, ge=0, description="weight of L_dec")
    dyn_weight: float = Field(0.1, ge=0, description="weight of L_dyn (Markov shaping)")
    unif_weight: float = Field(0.001, ge=0, description="weight of L_unif")
    gamma: float = Field(1.0, gt=0, le=1, description="future position j weighted by gamma**j")
    unif_t: float = Field(2.0, gt=0, description="temperature t of the uniformity loss")
    unif_samples: int = Field(512, ge=2, description="memory tokens sampled for L_unif")
    anchors: Literal["uniform", "scored", "at_scored"] = Field(
        "uniform", description="where m_t is taken: any position, up to future_len-1 before a scored target "
        "(sparse tasks such as retrieval: uniform anchors rarely put the answer in the decoder's future), or on a "
        "scored target (L_dec0 then scores an answer from the memory alone on every crop)",
    )
    chain: int = Field(
        1, ge=1, description="consecutive anchors per crop: `run.batch_size` transitions come from batch_size/chain "
        "crops, and a chain of c transitions encodes c+1 windows instead of 2c (each inner memory is one "
        "transition's target and the next one's start), so the encoder, most of a step, does (c+1)/2c of the work; "
        "the transitions of a chain are neighbours, not independent draws",
    )
    dyn_rollout: bool = Field(
        False, description="L_dyn along each chain from the updater's own rollout: it starts from the chain's first "
        "memory and steps on its own, each step compared with the encoder's memory there (a chain of c gives "
        "1..c-step predictions), so the teacher's memory is shaped to stay readable under repeated updates, not "
        "only one; needs chain >= 2. False: c one-step transitions from the encoder's memories",
    )
    init_from: str | None = Field(
        None, description="start from this teacher artifact's weights (teacher and reference updater): a URL, or a "
        "name under the run root such as teacher-<hash16>. Same shapes required; context_len and future_len may "
        "differ, so a teacher trained on short sequences starts one for longer ones (a curriculum over lengths). "
        "Its cost is counted in this teacher's train_flops",
    )

    @model_validator(mode="after")
    def _whole_chains(self) -> TeacherTrainConfig:
        if self.dyn_rollout and self.chain < 2:
            raise ValueError("teacher.dyn_rollout rolls the updater along a chain: set teacher.chain >= 2")
        if self.run.batch_size % self.chain:
            raise ValueError(f"teacher.run.batch_size ({self.run.batch_size}) counts transitions and must be a "
                             f"multiple of teacher.chain ({self.chain})")
        return self


class LabelSpec(StrictModel):
    """Which windows the label store holds and how (docs/architecture.md, 'Label store layout')."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"compile", "cpu_bf16"})

    trajectory_len: int = Field(256, ge=1, description="L: transitions per window (L+1 memories); >= dmt.rollout_len")
    num_windows: int | None = Field(1024, ge=1, description="windows to sample; null = all at `stride`")
    stride: int = Field(256, ge=1, description="step between window anchors when num_windows is null")
    split: Literal["train", "test", "all"] = Field("train", description="documents to label")
    from_empty: bool = Field(
        True, description="also offer windows starting at the empty memory (anchor -1), the memory every RNN "
        "starts from, so students learn their first updates (false: only memories that have read a token)",
    )
    dtype: Literal[tuple(LABEL_CODECS)] = Field(  # type: ignore[valid-type]  # schemas/registry.py
        "float16", description="memory storage codec (float16, or int8 with a scale per memory token)"
    )
    shard_windows: int = Field(16, ge=1, description="windows per shard = one Beam work unit")
    batch_size: int = Field(512, ge=1, description="contexts per encoder forward pass")
    device: str = Field("auto", description="encoder device in workers")
    compile: bool = Field(
        False, description="torch.compile the teacher's blocks in every worker (models/compiled.py): faster "
        "encoding after a first compile per worker (~30 s on a CPU), so for large stores",
    )
    cpu_bf16: bool = Field(
        False, description="encode in bf16 autocast on a CPU too (always on CUDA): faster on CPUs with bf16 matrix "
        "instructions (AVX512-BF16, AMX); labels change within bf16 rounding",
    )
    seed: int = Field(0, description="seed of window sampling")


class BeamConfig(StrictModel):
    """Beam runner settings; anything in `options` is passed through as pipeline flags."""

    runner: str = Field("FnApiRunner", description="FnApiRunner, DirectRunner, FlinkRunner, SparkRunner, Dataflow…")
    num_workers: int = Field(2, ge=1, description="local worker processes (direct runners)")
    options: list[str] = Field(default_factory=list, description="extra pipeline flags, e.g. --flink_master=…")
    dask_address: str | None = Field(
        None, description="DaskRunner: the scheduler, e.g. tcp://10.0.0.5:8786 (null: Beam starts a local cluster)"
    )


class DistillConfig(StrictModel):
    """SMT: regression of an RNN's update on stored transitions, plus its readout."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"input_noise"})

    run: RunConfig = Field(default_factory=lambda: RunConfig(steps=20_000, batch_size=128))
    optim: OptimConfig = Field(default_factory=OptimConfig)
    readout_weight: float = Field(1.0, ge=0, description="weight of readout cross-entropy on stored memories")
    input_noise: float = Field(
        0.0, ge=0, description="standard deviation of Gaussian noise added to each stored m_t before the update "
        "(the target m_{t+1} stays clean): the updater learns to pull a memory that is a little off back onto the "
        "teacher's, so its own errors shrink along a rollout instead of adding up. Helps where the teacher's memory "
        "barely moves per step (encoder_memory: persistent); hurt on a memory that moves with every token "
        "(docs/comparison.md). 0 = off")


SelectionMetric = Literal["loss", "error"]
METRIC_DESCRIPTION = ("what the held-out checks compare: loss (readout cross-entropy per scored token) or error "
                      "(1 - top-1 accuracy on the scored targets; for tasks with one right answer, such as retrieval "
                      "or MQAR, where the lowest loss and the most right answers can fall at different steps)")


class KeepBestConfig(StrictModel):
    """Model selection for DMT: a fixed batch of unseen sequences, read from the RNN's own memory."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"metric", "patience"})

    eval_every: int = Field(100, ge=1, description="steps between held-out checks")
    sequences: int = Field(128, ge=1, description="held-out sequences per check (a fixed batch)")
    seq_len: int | None = Field(None, ge=1, description="tokens per held-out sequence; null: dmt.rollout_len")
    metric: SelectionMetric = Field("loss", description=METRIC_DESCRIPTION)
    patience: int | None = Field(
        None, ge=1, description="stop DMT after this many checks in a row without a lower figure (null: run every "
        "step). The student's cost counts the steps it ran; the matched BPTT baseline is sized from the configured "
        "steps, so an early stop gives the baseline more compute than the student used, never less",
    )


class DMTConfig(StrictModel):
    """DAgger Memory Training fine-tune (docs/method.md section 6, published defaults)."""

    run: RunConfig = Field(default_factory=lambda: RunConfig(steps=1500, batch_size=32))
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=3e-5, schedule="cosine"))
    rollout_len: int = Field(256, ge=1, description="Td: steps rolled out on the RNN's own memories")
    pull_every: int = Field(16, ge=1, description="k: pull toward the encoder memory every k-th step")
    pull_phase: Literal["fixed", "random"] = Field(
        "fixed", description="which steps are pulled. fixed: steps k, 2k, ... of every rollout; random: each "
        "rollout its own offset, steps r, r+k, ... with r drawn from 1..k by the seeded loss generator (as many "
        "pulls, so the same FLOPs), so every step of a window is pulled in turn. When every window starts at a "
        "document's first token (whole-document label stores), fixed pulls never reach steps 1..k-1 and the "
        "updater's writes there drift until its own rollouts run away; use random there",
    )
    dyn_weight: float = Field(10.0, ge=0, description="weight of the memory pull (MSE)")
    readout_weight: float = Field(1.0, ge=0, description="weight of readout CE on own memories")
    dec_weight: float = Field(1.0, ge=0, description="weight of frozen-decoder L_dec on own memories")
    unif_weight: float = Field(0.01, ge=0, description="weight of L_unif on own memories")
    teacher_forced_weight: float = Field(
        0.0, ge=0, description="weight of SMT's own pull at the pulled steps: update(encoder m_{s-1}, x_s) toward "
        "encoder m_s, beside the pull from the RNN's own m_{s-1}. DAgger trains on the expert's states and the "
        "learner's together; with the learner's alone the fine-tune can leave the teacher's states behind",
    )
    keep_best: KeepBestConfig | None = Field(
        None, description="publish the weights with the lowest held-out loss (or error, `metric`) from the RNN's "
        "own memory, checked every `eval_every` steps (and before the first) on train-split documents that have no "
        "window in the label store, so neither the student nor the selection has seen them; null: the last step's "
        "weights",
    )

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"keep_best", "teacher_forced_weight", "pull_phase"})


class PlateauConfig(StrictModel):
    """Early stopping on held-out loss: what BPTT reaches given as much compute as it can use."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"metric"})

    max_steps: int = Field(5000, ge=1, description="cap on optimiser steps (also sizes the LR schedule)")
    eval_every: int = Field(50, ge=1, description="steps between held-out checks")
    patience: int = Field(4, ge=1, description="checks without improvement before stopping")
    sequences: int = Field(128, ge=1, description="held-out sequences per check (a fixed batch)")
    held_out: Literal["validation", "test"] = Field(
        "validation",
        description="where the checks' sequences come from. validation: a seeded `validation_fraction` of the "
        "train split's documents, which the baseline then does not train on, so the test split stays unseen "
        "until the evaluation; test: the test split, as before this option (it selects the weights on the "
        "split the evaluation scores, which flatters BPTT)",
    )
    validation_fraction: float = Field(
        0.05, gt=0, lt=1, description="held_out='validation': share of the train split's documents set aside "
        "(at least one), drawn with the baseline's seed",
    )
    metric: SelectionMetric = Field("loss", description=METRIC_DESCRIPTION)


STEP_BUDGETS = ("match_smt_flops", "steps")  # BPTT budgets that fix the step count before the run starts


class BaselineSelectionConfig(StrictModel):
    """Model selection for a BPTT baseline whose student selects (`dmt.keep_best`): as many checks as the
    student's, on validation documents set aside from the train split, so selection favours neither side."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"metric"})

    checks: int = Field(ge=1, description="held-out checks after the first step, spread evenly over the run "
                        "(one more before the first step, as DMT's)")
    sequences: int = Field(ge=1, description="held-out sequences per check (a fixed batch)")
    seq_len: int = Field(ge=1, description="tokens per held-out sequence")
    validation_fraction: float = Field(
        0.05, gt=0, lt=1, description="share of the train split's documents set aside for the checks (at least "
        "one), drawn with the baseline's seed; the baseline does not train on them",
    )
    metric: SelectionMetric = Field("loss", description=METRIC_DESCRIPTION + "; the flow copies the student's")

    def every(self, steps: int) -> int:
        """Steps between checks in a run of `steps` steps."""
        return max(1, steps // self.checks)


class BPTTConfig(StrictModel):
    """Baseline: the same RNN unrolled from its initial memory with full backpropagation."""

    run: RunConfig = Field(default_factory=lambda: RunConfig(steps=20_000, batch_size=128))
    optim: OptimConfig = Field(default_factory=OptimConfig)
    seq_len: int = Field(64, ge=1, description="T: unrolled steps per sequence")
    budget: Literal["match_smt_flops", "steps", "seconds", "match_smt_seconds", "plateau"] = Field(
        "match_smt_flops",
        description="match_smt_flops: the training FLOPs of the variant's SMT+DMT student (from the shapes, "
        "deterministic; run.steps is ignored); steps: run.steps; plateau: up to run.steps, stopped early on "
        "held-out loss (see `plateau`); seconds: run.max_seconds; match_smt_seconds: the SMT stage's "
        "wall-clock (both seconds budgets follow the machine's load: not reproducible)",
    )
    plateau: PlateauConfig | None = Field(None, description="early stopping for budget='plateau'")
    keep_best: BaselineSelectionConfig | None = Field(
        None, description="publish the weights with the lowest held-out loss (or error) of `checks` checks (budgets "
        "'match_smt_flops' and 'steps'); the flow sets it from dmt.keep_best when left null, so the matched "
        "baseline gets the selection its student gets, paid from the same budget",
    )

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"plateau", "keep_best"})

    @model_validator(mode="after")
    def _one_selection(self) -> BPTTConfig:
        if self.keep_best is not None and self.budget not in STEP_BUDGETS:
            raise ValueError(f"bptt.keep_best spreads its checks over a known number of steps: budget "
                             f"'match_smt_flops' or 'steps', not {self.budget!r} (the plateau selects by its own)")
        return self


class EvalConfig(StrictModel):
    """Read loss per position, samples, and the teacher ceiling."""

    prefix_len: int = Field(64, ge=1, description="tokens the teacher reads before the RNN takes over")
    steps: int = Field(128, ge=1, description="N: positions scored after the prefix / from init")
    num_sequences: int = Field(256, ge=1, description="test sequences scored")
    num_samples: int = Field(4, ge=0, description="continuations sampled for the report")
    sample_len: int = Field(128, ge=1, description="tokens per sampled continuation")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    batch_size: int = Field(64, ge=1, description="sequences per forward pass")
    device: str = Field("auto", description="evaluation device")
    seed: int = Field(0, description="seed of sampling")


class TaskRunnerConfig(StrictModel):
    """Where the Prefect flow runs its tasks: threads of the flow's process, or a Dask cluster (prefect-dask),
    so many variants trained from one label store spread over machines. Results do not depend on it."""

    kind: Literal["threads", "dask"] = Field("threads", description="threads: Prefect's default; dask: DaskTaskRunner")
    address: str | None = Field(None, description="dask: the scheduler, tcp://HOST:8786 (null: a local cluster)")
    workers: int = Field(2, ge=1, description="dask without address: worker processes of the local cluster")


class TeacherChoiceConfig(StrictModel):
    """Train one teacher per seed and keep the one whose SMT student reads best from its own memory on train
    documents the label store has no window of (docs/comparison.md: teachers that answer equally well differ
    in how well a student follows their memories, more than student seeds do)."""

    seeds: list[int] = Field(min_length=2, description="teacher.run.seed of each candidate (distinct, >= 0)")
    sequences: int = Field(256, ge=1, description="held-out sequences each candidate's student is scored on")
    seq_len: int | None = Field(None, ge=1, description="tokens per held-out sequence; null: dmt.rollout_len")

    @model_validator(mode="after")
    def _distinct(self) -> TeacherChoiceConfig:
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"teacher_choice.seeds must be distinct and >= 0, got {self.seeds}")
        return self


class PipelineConfig(StrictModel):
    """The whole flow: tokens -> teacher -> labels -> (distill -> DMT, BPTT) per variant -> evaluate -> report."""

    name: str = Field("smt", description="run name shown in Prefect and the report")
    root: str = Field("runs", description="fsspec URL under which content-addressed artifacts live")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per task (and per local Beam worker); null = the cores shared "
        "among the tasks that run at once (distill/DMT/BPTT: cores // variants). Recorded in every manifest; "
        "CPU results depend on it, so fix it to compare bytes across machines",
    )
    task_runner: TaskRunnerConfig = Field(
        default_factory=lambda: TaskRunnerConfig(), description="where the flow's tasks run (flows/task_runners.py)"
    )
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    teacher: TeacherTrainConfig = Field(default_factory=TeacherTrainConfig)
    teacher_margin_bits: float | None = Field(
        0.05, ge=0, description="stop before the label job unless the teacher's held-out L_dec0 beats the unigram "
        "entropy of the same targets by this many bits (a teacher at chance makes a worthless store); null = off",
    )
    teacher_min_accuracy: float | None = Field(
        None, ge=0, le=1, description="also stop unless the teacher's held-out top-1 accuracy on the scored "
        "anchors reaches this (for tasks with one right answer, such as retrieval or MQAR, where a teacher can "
        "beat the unigram by storing which answers occur without knowing which one is asked for); null = off",
    )
    teacher_choice: TeacherChoiceConfig | None = Field(
        None, description="train a teacher per seed (each with its label store and the first variant's SMT "
        "student) and continue with the one whose student has the lowest held-out read loss from its own memory; "
        "the others' cost is counted in the shared cost. null: one teacher, from teacher.run.seed",
    )
    labels: LabelSpec = Field(default_factory=LabelSpec)
    beam: BeamConfig = Field(default_factory=BeamConfig)
    variants: list[RNNConfig] = Field(default_factory=lambda: [RNNConfig()], description="RNNs to train")
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="train every variant once per seed (its students' "
        "init and data order; one teacher and store for all): the report adds mean and spread over them",
    )
    distill: DistillConfig = Field(default_factory=DistillConfig)
    dmt: DMTConfig = Field(default_factory=DMTConfig)
    bptt: BPTTConfig = Field(default_factory=BPTTConfig)
    bptt_plateau: PlateauConfig | None = Field(
        None, description="also train each variant's BPTT baseline to a plateau on held-out loss, beside the "
        "compute-matched one (role `<variant>/bptt-plateau`); null: only the matched baseline"
    )
    evaluate: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and >= 0, got {self.seeds}")
        labels = [v.label for v in self.students]
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant names (with their seeds) must be unique, got {labels}")
        if self.dmt.rollout_len > self.labels.trajectory_len:
            raise ValueError(
                f"dmt.rollout_len ({self.dmt.rollout_len}) exceeds labels.trajectory_len "
                f"({self.labels.trajectory_len}): the store holds no memories that far"
            )
        return self

    def with_teacher_seed(self, seed: int) -> PipelineConfig:
        """This config with one teacher, trained from `seed` (a candidate of `teacher_choice`, or the chosen one)."""
        run = self.teacher.run.model_copy(update={"seed": seed})
        return self.model_copy(update={"teacher": self.teacher.model_copy(update={"run": run}),
                                       "teacher_choice": None})

    @property
    def students(self) -> list[RNNConfig]:
        """Every variant once per seed, in config order: the RNNs the flow trains (seed 0 keeps its label)."""
        return [v.model_copy(update={"seed": v.seed + s}) for v in self.variants for s in self.seeds]


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line meant for the user."""


def load_config(path: str | Path, model: type[StrictModel] = PipelineConfig) -> Any:
    """Read a YAML config and validate it, turning pydantic errors into one readable line each."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # one line: where, then what (PyYAML's own text spans several)
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read as text: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: " + "; ".join(_describe(e) for e in err.errors())) from err


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    return f"{where}: {error['msg']}"
