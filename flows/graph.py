"""The pipeline's stage graph, declared once: which stage runs after which, with what, under which role.

    tokens -> teacher -> (quality gate) -> labels (Beam) -> per variant: distill -> DMT, BPTT -> evaluate

With `teacher_choice`, the teacher is chosen first: each candidate seed is built up to its first student's SMT
(tokens -> teacher -> labels -> distill), a `teacher_choice` stage scores those students on held-out train
documents, and the graph above runs with the chosen seed (re-using that candidate's artifacts).

`run_graph` walks it with an `Executor`: the Prefect flow's submits each stage as a task
(flows/smt_pipeline.py), the local one calls it in this process (flows/local.py, the CLI's
single-stage commands). Both therefore run the same stages in the same order under the same role
names, thread counts and BPTT budgets; only how a stage is executed differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from schemas.config import (
    STEP_BUDGETS,
    BaselineSelectionConfig,
    BPTTConfig,
    DistillConfig,
    DMTConfig,
    PipelineConfig,
    RNNConfig,
)
from stages.bptt import bptt_stage, budget_inputs
from stages.distill import distill_stage
from stages.dmt import dmt_stage
from stages.evaluate import evaluate_stage
from stages.labels import labels_stage
from stages.teacher import TeacherQualityError, require_useful_teacher, teacher_stage
from stages.teacher_choice import chosen_seed, teacher_choice_stage
from stages.tokens import tokens_stage
from store import plans
from store.artifacts import ArtifactRef
from training.threads import threads_for


@dataclass(frozen=True)
class Stage:
    """One node: its name, the function that builds its artifact, and the plan that addresses it
    (same keyword arguments; the address is known before the stage runs, see store/plans.py)."""

    name: str
    run: Callable[..., ArtifactRef]
    plan: Callable[..., ArtifactRef]
    per_variant: bool = False  # one task per RNN variant (they train at once in the flow)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("tokens", tokens_stage, plans.plan_tokens),
        Stage("teacher", teacher_stage, plans.plan_teacher),
        Stage("labels", labels_stage, plans.plan_labels),
        Stage("distill", distill_stage, plans.plan_distill, per_variant=True),
        Stage("dmt", dmt_stage, plans.plan_dmt, per_variant=True),
        Stage("bptt", bptt_stage, plans.plan_bptt, per_variant=True),
        Stage("bptt_plateau", bptt_stage, plans.plan_bptt, per_variant=True),  # only with cfg.bptt_plateau
        Stage("teacher_choice", teacher_choice_stage, plans.plan_teacher_choice),  # only with cfg.teacher_choice
        Stage("evaluate", evaluate_stage, plans.plan_evaluate),
    )
}
ORDER = tuple(name for name in STAGES if name not in ("bptt_plateau", "teacher_choice"))  # they run with others
# role = f"{variant.label}/{mode}"
STUDENT_ROLES = {"distill": "smt", "dmt": "smt+dmt", "bptt": "bptt", "bptt_plateau": "bptt-plateau"}


class Executor(Protocol):
    """How a stage is run: `submit` may return at once (a future), `result` waits for its ref."""

    def submit(self, stage: Stage, variant: RNNConfig | None, threads: int, params: dict[str, Any]) -> Any: ...

    def result(self, handle: Any) -> ArtifactRef: ...


def role_of(stage: str, variant: RNNConfig | None = None) -> str:
    """The name an artifact has in a run's lineage and report: `tokens`, `gru/smt+dmt`, `evaluation`."""
    if variant is not None:
        return f"{variant.label}/{STUDENT_ROLES[stage]}"
    return "evaluation" if stage == "evaluate" else stage


StageConfig = TypeVar("StageConfig", DistillConfig, DMTConfig, BPTTConfig)


def seeded_for(stage_cfg: StageConfig, variant: RNNConfig) -> StageConfig:
    """A student's stage config: its run seed shifted by the variant's seed (seed 0: unchanged bytes)."""
    if not variant.seed:
        return stage_cfg
    run = stage_cfg.run.model_copy(update={"seed": stage_cfg.run.seed + variant.seed})
    return stage_cfg.model_copy(update={"run": run})


def plateau_config(cfg: PipelineConfig) -> BPTTConfig:
    """The BPTT baseline trained to a plateau: `bptt` with budget 'plateau' and its own step cap."""
    assert cfg.bptt_plateau is not None
    run = cfg.bptt.run.model_copy(update={"steps": cfg.bptt_plateau.max_steps})
    return cfg.bptt.model_copy(update={"budget": "plateau", "plateau": cfg.bptt_plateau, "run": run})


def matched_config(cfg: PipelineConfig) -> BPTTConfig:
    """The matched BPTT baseline: `bptt`, and when the student's DMT keeps its best weights (`dmt.keep_best`),
    as many checks of its own on validation documents, so selection flatters neither side (docs/comparison.md).
    An explicit `bptt.keep_best` is kept as given; budgets in seconds have no step count to spread checks over."""
    kb = cfg.dmt.keep_best
    if kb is None or cfg.bptt.keep_best is not None or cfg.bptt.budget not in STEP_BUDGETS:
        return cfg.bptt
    selection = BaselineSelectionConfig(checks=max(1, cfg.dmt.run.steps // kb.eval_every), sequences=kb.sequences,
                                        seq_len=kb.seq_len or cfg.dmt.rollout_len, metric=kb.metric)
    return cfg.bptt.model_copy(update={"keep_best": selection})


def run_graph(
    cfg: PipelineConfig,
    executor: Executor,
    last: str = "evaluate",
    variants: list[RNNConfig] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, ArtifactRef]:
    """Build every artifact up to stage `last` (inclusive) for `variants` (default: all); returns role -> ref.

    Threads per task come from the config and the number of variants in it, never from the subset
    chosen or the machine's load, so any subset run one by one gives the flow's bytes."""
    if last not in STAGES:
        raise ValueError(f"unknown stage '{last}', expected one of {', '.join(ORDER)}")
    wanted = ORDER[: ORDER.index(last) + 1]
    variants = cfg.students if variants is None else variants
    root = cfg.root
    refs: dict[str, ArtifactRef] = {}

    def submit(name: str, of: RNNConfig | None = None, **params: Any) -> Any:  # of: the variant, if per variant
        threads = threads_for(cfg.threads, name, len(cfg.students))
        return executor.submit(STAGES[name], of, threads, {**params, "root": root})

    def done(name: str, handle: Any, variant: RNNConfig | None = None) -> ArtifactRef:
        ref = refs[role_of(name, variant)] = executor.result(handle)
        log(f"{role_of(name, variant)}: {ref.url}")
        return ref

    tokens = done("tokens", submit("tokens", cfg=cfg.tokens))
    if "teacher" not in wanted:
        return refs
    if cfg.teacher_choice is not None:
        cfg = choose_teacher(cfg, executor, refs, log)
    teacher = done("teacher", submit("teacher", tokens_url=tokens.url, cfg=cfg.teacher))
    if "labels" not in wanted:
        return refs
    require_useful_teacher(teacher.url, tokens.url, cfg.teacher_margin_bits, cfg.teacher_min_accuracy)  # before labels
    labels = done("labels", submit(
        "labels", tokens_url=tokens.url, teacher_url=teacher.url, spec=cfg.labels, beam=cfg.beam,
        worker_threads=cfg.threads))
    if "distill" not in wanted:
        return refs

    distilled = {v.label: submit("distill", v, labels_url=labels.url, teacher_url=teacher.url, variant=v,
                                 cfg=seeded_for(cfg.distill, v)) for v in variants}
    students: list[tuple[str, RNNConfig, Any]] = []
    for v in variants:
        smt = done("distill", distilled[v.label], v)
        if "dmt" in wanted:
            students.append(("dmt", v, submit(
                "dmt", v, rnn_url=smt.url, labels_url=labels.url, teacher_url=teacher.url,
                cfg=seeded_for(cfg.dmt, v))))
        if "bptt" in wanted:
            students.append(("bptt", v, submit(
                "bptt", v, tokens_url=tokens.url, variant=v, teacher_url=teacher.url,
                cfg=seeded_for(matched_config(cfg), v), **budget_inputs(cfg, v, smt.url))))
            if cfg.bptt_plateau is not None:
                students.append(("bptt_plateau", v, submit(
                    "bptt_plateau", v, tokens_url=tokens.url, variant=v, teacher_url=teacher.url,
                    cfg=seeded_for(plateau_config(cfg), v))))
    for name, v, handle in students:
        done(name, handle, v)

    if "evaluate" in wanted:
        rnn_urls = {role: ref.url for role, ref in refs.items() if ref.kind == "rnn"}
        done("evaluate", submit(
            "evaluate", rnn_urls=rnn_urls, tokens_url=tokens.url, teacher_url=teacher.url,
            labels_url=labels.url, cfg=cfg.evaluate))
    return refs


def choose_teacher(
    cfg: PipelineConfig, executor: Executor, refs: dict[str, ArtifactRef], log: Callable[[str], None],
) -> PipelineConfig:
    """Build every `teacher_choice` candidate up to its first student's SMT (the artifacts the chosen one's run
    re-uses), score them (stages/teacher_choice.py) and return the config with the chosen teacher's seed.
    A candidate the quality gate stops is left out; the flow stops only when every one is."""
    assert cfg.teacher_choice is not None
    probe = cfg.students[:1]
    candidates: dict[str, dict[str, str]] = {}
    refused = []
    for seed in cfg.teacher_choice.seeds:
        try:
            built = run_graph(cfg.with_teacher_seed(seed), executor, "distill", probe,
                              lambda line, seed=seed: log(f"candidate teacher seed {seed}: {line}"))
        except TeacherQualityError as err:
            log(f"candidate teacher seed {seed} left out: {err}")
            refused.append(str(err))
            continue
        candidates[str(seed)] = {"teacher": built["teacher"].url, "labels": built["labels"].url,
                                 "rnn": built[role_of("distill", probe[0])].url}
    if not candidates:
        raise TeacherQualityError(f"no teacher_choice candidate passed the quality gate: {refused[0]}")
    choice_cfg = cfg.teacher_choice.model_copy(update={"seq_len": cfg.teacher_choice.seq_len or cfg.dmt.rollout_len})
    handle = executor.submit(STAGES["teacher_choice"], None, threads_for(cfg.threads, "teacher_choice", 1),
                             {"candidates": candidates, "cfg": choice_cfg, "root": cfg.root})
    ref = refs["teacher_choice"] = executor.result(handle)
    seed = chosen_seed(ref.url)
    log(f"teacher_choice: {ref.url} (teacher seed {seed})")
    return cfg.with_teacher_seed(seed)
