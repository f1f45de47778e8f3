"""The Beam job that materialises teacher memory labels into a label store (store/label_layout.py).

    launcher: plan windows (seeded) -> Zarr template + _plan.parquet + _template.json
    Beam:     Create(pending shard ids) -> [Reshuffle on clusters] -> ParDo(EncodeUnitsFn)   (one shard = one unit)
    launcher: all completion records present -> index.parquet -> manifest.json (last)

Content-addressed: the store URL is a hash of (tokens hash, teacher hash, LabelSpec); a complete store
whose checksums all match is returned without encoding, a damaged one is repaired. One writer: the
job runs under the store's lock (store/locks.py), so concurrent runs wait, then find it complete.
Resumable: a unit is done when its completion record exists and its recorded chunks still match their
checksums (pipelines/label_repair.py); killed runs leave at most unfinished units, whose chunks the
re-run rewrites with the same bytes (encoding is deterministic per unit on CPU: fixed batch
composition and thread count). Tokens and teacher weights are checked before any worker starts.
Command line:

    python -m pipelines.materialize_labels --tokens URL --teacher URL --root ROOT \
        [--spec '{"trajectory_len": 64, ...}'] [--beam '{"runner": "DirectRunner", "num_workers": 2}']
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from fsspec.core import url_to_fs

from models.compiled import compile_blocks
from pipelines.label_repair import complete_store_damage, recheck_finished_units, unpublish
from pipelines.label_units import plan_windows, run_unit
from pipelines.options import is_local_runner, pipeline_options
from schemas.config import BeamConfig, LabelSpec, TeacherModelConfig
from schemas.layout import INDEX_FILE, LABEL_INDEX_SCHEMA
from schemas.manifest import sha256_bytes
from store.artifacts import (
    ArtifactError,
    ArtifactRef,
    is_complete,
    open_artifact,
    publish_manifest,
    read_bytes,
    write_bytes_atomic,
)
from store.environment import environment_error_in
from store.integrity import check_recorded_file, verify_reads
from store.label_layout import (
    PLAN_FILE,
    TEMPLATE_FILE,
    LabelGeometry,
    create_template,
    finished_units,
    merge_stats,
    open_arrays,
    read_unit_record,
)
from store.locks import artifact_lock
from store.plans import plan_labels
from store.teacher import TEACHER_FILE, teacher_config
from store.tokens import TokensArtifact
from training.loop import resolve_device
from training.threads import available_cores

log = logging.getLogger("smt.labels")
Progress = Callable[[int, int], None]  # (units done, units total)


class EncodeUnitsFn(beam.DoFn):
    """Encode whole shards: the teacher, tokens and plan are loaded once per worker in `setup`."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job  # plain strings and numbers: pickled to every worker
        self.units = beam.metrics.Metrics.counter("smt_labels", "units_encoded")
        self.skipped = beam.metrics.Metrics.counter("smt_labels", "units_skipped")

    def setup(self) -> None:
        from store.teacher import load_teacher

        job = self.job
        if job["threads"]:
            torch.set_num_threads(job["threads"])  # fixed per config: deterministic CPU reductions
        self.device = resolve_device(job["device"])
        self.teacher, _ = load_teacher(job["teacher_url"], self.device)
        if job["compile"]:
            compile_blocks(self.teacher)
        self.tokens = TokensArtifact.open(job["tokens_url"])
        self.plan = pq.read_table(io.BytesIO(read_bytes(f"{job['url']}/{PLAN_FILE}")))
        self.geometry = LabelGeometry(**job["geometry"])
        self.arrays = open_arrays(job["url"], mode="r+")

    def process(self, shard: int):  # type: ignore[override]
        url = self.job["url"]
        if read_unit_record(url, shard) is not None:  # finished by an earlier or retried attempt
            self.skipped.inc()
            return
        threads = self.job["threads"]
        if threads and torch.get_num_threads() != threads:  # a cluster may call process() on another
            torch.set_num_threads(threads)  # thread than setup(), and torch's count is per thread
        extra = {"worker": f"{socket.gethostname()}:{os.getpid()}", "torch_threads": torch.get_num_threads()}
        record = run_unit(
            url, self.arrays, self.geometry, self.plan, shard, self.teacher, self.tokens,
            self.job["batch_size"], self.device, extra, cpu_bf16=self.job["cpu_bf16"],
        )
        self.units.inc()
        yield record


def materialize_labels(
    tokens_url: str, teacher_url: str, spec: LabelSpec, beam_cfg: BeamConfig, root: str,
    progress: Progress | None = None,
    threads: int | None = None,
) -> ArtifactRef:
    """Build (or resume, or just return) the label store of (tokens, teacher, spec) under `root`.

    threads: torch threads per worker (None: local workers share the cores, remote ones keep torch's default)."""
    tokens_ref, _ = open_artifact(tokens_url, "tokens")
    teacher_ref, teacher_manifest = open_artifact(teacher_url, "teacher")
    model = teacher_config(teacher_manifest).model
    config = spec.address_json()  # as store/plans.py addresses it
    parents = {"tokens": tokens_ref.hash, "teacher": teacher_ref.hash}
    ref = plan_labels(tokens_url=tokens_url, teacher_url=teacher_url, spec=spec, root=root)
    trusted = is_complete(ref.url) and (not verify_reads() or not complete_store_damage(ref.url))
    if trusted:  # no lock: works on read-only roots
        log.info("label store %s is complete and its checksums match: nothing to do", ref.url)
        return ref
    with artifact_lock(ref.url, f"label store {ref.url}"):
        return _materialize(ref, tokens_url, teacher_url, spec, beam_cfg, model, config, parents, progress, threads)


def _materialize(
    ref: ArtifactRef, tokens_url: str, teacher_url: str, spec: LabelSpec, beam_cfg: BeamConfig,
    model: TeacherModelConfig, config: dict[str, Any], parents: dict[str, str], progress: Progress | None,
    threads: int | None = None,
) -> ArtifactRef:
    """The label job proper, under the store's lock: verify what exists, encode what is missing."""
    if is_complete(ref.url):  # again, under the lock: another builder may have finished or repaired it
        damage = complete_store_damage(ref.url, fix=True)
        if not damage:
            log.info("label store %s is complete and its checksums match: nothing to do", ref.url)
            return ref
        log.warning("label store %s is damaged (%s): repairing it", ref.url, "; ".join(damage[:3]))
        unpublish(ref.url)  # incomplete while it is repaired: no reader trusts it meanwhile

    check_reachable(ref.url, beam_cfg)
    tokens = TokensArtifact.open(tokens_url)
    _ = tokens.tokens, tokens.targets  # checked here, once, before any worker labels them
    _, teacher_manifest = open_artifact(teacher_url, "teacher")
    check_recorded_file(teacher_url, teacher_manifest.checksums, TEACHER_FILE, "teacher")
    if tokens.vocab_size > model.vocab_size:
        raise ArtifactError(
            f"tokens vocab_size {tokens.vocab_size} exceeds the teacher's vocab_size {model.vocab_size}"
        )
    plan = plan_windows(tokens, spec)
    geometry = LabelGeometry.build(spec, model, plan.num_rows)
    prepare_template(ref, geometry, plan, parents)

    total = geometry.num_shards
    finished = recheck_finished_units(ref.url, finished_units(ref.url))
    pending = [s for s in range(total) if s not in finished]
    log.info(
        "label store %s: %d windows, %d units (%d pending), %s memories",
        ref.url, geometry.num_windows, total, len(pending), spec.dtype,
    )
    if pending:
        job = {
            "url": ref.url, "tokens_url": tokens_url, "teacher_url": teacher_url,
            "geometry": asdict(geometry), "batch_size": spec.batch_size, "device": spec.device,
            "threads": worker_threads(beam_cfg, threads), "compile": spec.compile,
            "cpu_bf16": spec.cpu_bf16,
        }
        monitor = _ProgressMonitor(ref.url, total, geometry.shard_windows * geometry.steps, progress)
        monitor.start()
        try:
            run_beam(beam_cfg, ref, pending, job)
        finally:
            monitor.stop()
    return finalize(ref, geometry, plan, config, parents)


def run_beam(beam_cfg: BeamConfig, ref: ArtifactRef, pending: list[int], job: dict[str, Any]) -> None:
    """Run the Beam job over `pending` units. A runner that cannot start, and a worker's OSError (disk
    full, permissions: Beam re-raises it as text inside its own error), become one ArtifactError line;
    our own errors pass through; anything else is a bug and keeps its traceback."""
    try:
        pipeline = beam.Pipeline(options=pipeline_options(beam_cfg, job_name=f"smt-labels-{ref.hash[:12]}"))
    except Exception as err:  # unknown runner, missing extra, bad flags
        raise ArtifactError(f"Beam runner {beam_cfg.runner} cannot start: {_first_line(err)}") from err
    try:
        with _process_dask_config_kept(), pipeline as p:
            units = p | "Units" >> beam.Create(pending)
            if not is_local_runner(beam_cfg):  # unfuse Create from the DoFn so a cluster spreads units
                units = units | "Spread" >> beam.Reshuffle()
            _ = units | "Encode" >> beam.ParDo(EncodeUnitsFn(job))
        _close_runner_client(pipeline)
    except ArtifactError:
        raise
    except Exception as err:
        ours = _OUR_ERROR.search(str(err))  # a worker process's ArtifactError, re-raised by Beam as text
        if ours is not None:
            raise ArtifactError(ours.group(1).strip()) from err
        missing_jar = _unstaged_job_server(err, beam_cfg.runner)
        if missing_jar is not None:
            raise ArtifactError(f"Beam runner {beam_cfg.runner} cannot start: {missing_jar}") from err
        environment = environment_error_in(err)
        if not _started(err):  # e.g. PrismRunner offline: its binary cannot be downloaded
            raise ArtifactError(
                f"Beam runner {beam_cfg.runner} cannot start: {environment or _first_line(err)}"
            ) from err
        if environment is not None:
            raise ArtifactError(f"label job for {ref.url} failed: {environment}") from err
        raise


@contextlib.contextmanager
def _process_dask_config_kept() -> Iterator[None]:
    """Beam's DaskRunner opens a `distributed.Client` as the process default and never closes it; its
    `scheduler: dask.distributed` setting then outlives the job and breaks the next plain dask
    computation in this process (xarray reading a store, say). Put dask's config back as it was."""
    try:
        import dask.config
    except ImportError:  # no dask installed: no DaskRunner, nothing to keep
        yield
        return
    before = {key: dask.config.config[key] for key in ("scheduler", "shuffle") if key in dask.config.config}
    try:
        yield
    finally:
        for key in ("scheduler", "shuffle"):
            dask.config.config.pop(key, None)
        dask.config.config.update(before)


def _close_runner_client(pipeline: beam.Pipeline) -> None:
    """Close the Dask client the DaskRunner opened for this job (other runners hold none)."""
    client = getattr(getattr(pipeline, "result", None), "client", None)
    if client is not None:
        client.close()


_JAR_AT = re.compile(r"stage the jar at (\S+?\.jar)")


def _unstaged_job_server(err: BaseException, runner: str) -> str | None:
    """Flink and Spark runners download a job-server jar when they start; offline that fails deep in
    Beam. Name the missing piece and where it goes instead (README, 'Beam on Flink, Spark')."""
    text = "\n".join(str(e) for e in (err, err.__cause__, err.__context__) if e is not None)
    if "job server jar" not in text:
        return None
    found = _JAR_AT.search(text)
    flag = "--spark_job_server_jar" if "Spark" in runner else "--flink_job_server_jar"
    where = f"copy it to {found.group(1)}" if found else "stage it in ~/.apache_beam/cache/jars/"
    name = found.group(1).rsplit("/", 1)[-1] if found else "the runner's job-server jar"
    return f"{name} is not staged and cannot be downloaded: {where}, or pass {flag}=PATH in beam.options"


_OUR_ERROR = re.compile(r"(?:IntegrityError|ArtifactError|ManifestError|LockError|SourceError): ([^\n]+)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _started(err: BaseException) -> bool:
    """Did the failure come from our DoFn (a worker ran our code) rather than from the runner itself?"""
    text = str(err)
    return "EncodeUnitsFn" in text or "'Encode'" in text



def check_reachable(url: str, beam_cfg: BeamConfig) -> None:
    """Workers write the store directly, so they must see its URL: refuse what they cannot."""
    in_process = is_local_runner(beam_cfg) and beam_cfg.num_workers == 1
    if url.startswith("memory://") and not in_process:
        raise ArtifactError(
            f"root {url.rsplit('/', 1)[0]} is process-local (memory://) but runner {beam_cfg.runner} "
            f"x{beam_cfg.num_workers} writes from other processes: use a shared path or num_workers 1"
        )
    if not is_local_runner(beam_cfg) and "://" not in url.replace("file://", ""):
        log.warning("label store %s is a local path but %s workers may run elsewhere", url, beam_cfg.runner)


def worker_threads(beam_cfg: BeamConfig, setting: int | None = None) -> int:
    """Torch threads per worker, pinned on every runner: the config's setting, else local worker
    processes share the cores instead of oversubscribing them, and a cluster's workers take one each (a
    Dask worker runs one unit per worker thread; one torch thread each fills its cores without fighting)."""
    if setting is not None:
        return setting
    if is_local_runner(beam_cfg):
        return max(1, available_cores() // beam_cfg.num_workers)
    return 1


def prepare_template(ref: ArtifactRef, geometry: LabelGeometry, plan: pa.Table, parents: dict[str, str]) -> None:
    """Reuse a matching template (resume), else start the directory afresh: plan, arrays, marker last."""
    plan_digest = sha256_bytes(
        b"".join(plan.column(c).to_numpy().tobytes() for c in ("window", "doc_id", "anchor", "shard"))
    )
    marker = {"hash": ref.hash, "geometry": asdict(geometry), "plan_sha256": plan_digest}
    marker_url = ref.join(TEMPLATE_FILE)
    fs, path = url_to_fs(ref.url)
    if fs.exists(f"{path}/{TEMPLATE_FILE}"):
        if json.loads(read_bytes(marker_url)) == marker:
            return
        log.warning("label store %s has a different template (older code?): starting it afresh", ref.url)
    if fs.exists(path):
        fs.rm(path, recursive=True)  # no marker: nothing in here can have been finished
    buf = io.BytesIO()
    pq.write_table(plan, buf)
    write_bytes_atomic(ref.join(PLAN_FILE), buf.getvalue())
    create_template(ref.url, geometry, {"parents": parents, "hash": ref.hash})
    write_bytes_atomic(marker_url, json.dumps(marker, indent=1, sort_keys=True).encode())


def finalize(
    ref: ArtifactRef, geometry: LabelGeometry, plan: pa.Table, config: dict[str, Any], parents: dict[str, str]
) -> ArtifactRef:
    """Check every unit finished, write index.parquet, aggregate stats and publish the manifest last."""
    records = [read_unit_record(ref.url, s) for s in range(geometry.num_shards)]
    missing = [s for s, r in enumerate(records) if r is None]
    if missing:
        raise ArtifactError(
            f"{len(missing)} of {geometry.num_shards} units of {ref.url} have no completion record "
            f"(first: shard {missing[0]}): the pipeline did not finish them; re-run to resume"
        )
    done = [r for r in records if r is not None]
    index = plan.cast(LABEL_INDEX_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(index, buf)
    write_bytes_atomic(ref.join(INDEX_FILE), buf.getvalue())
    checksums = {INDEX_FILE: sha256_bytes(buf.getvalue())}
    for record in done:
        checksums.update(record["checksums"])
    memory = merge_stats([r["stats"]["memory"] for r in done])
    dec_loss = merge_stats([r["stats"]["dec_loss"] for r in done])
    encode_seconds = float(sum(r.get("encode_seconds", 0.0) for r in done))
    splits = index.column("split").to_numpy(zero_copy_only=False)
    stats = {
        "memory": memory,
        "dec_loss": dec_loss,
        "teacher_l_dec0": dec_loss["mean"],  # mean readout CE over stored labels (nats)
        "windows_per_split": {str(s): int((splits == s).sum()) for s in np.unique(splits)},
        "encode_seconds": encode_seconds,
        "dtype": geometry.dtype,
        "torch_threads": sorted({r["torch_threads"] for r in done if "torch_threads" in r}),  # per worker
    }
    publish_manifest(ref, config, parents, counts=geometry.counts(), checksums=checksums, stats=stats)
    log.info("label store %s published: %d labels, memory RMS %.3f", ref.url, geometry.counts()["labels"],
             memory["rms"] or float("nan"))
    return ref


class _ProgressMonitor:
    """Polls the completion records while Beam runs: logs units done / total and labels/s."""

    def __init__(self, url: str, total: int, labels_per_unit: int, progress: Progress | None,
                 every: float = 2.0) -> None:
        self.url, self.total, self.labels_per_unit = url, total, labels_per_unit
        self.progress, self.every = progress, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="smt-labels-progress")

    def count(self) -> int:
        return len(finished_units(self.url))

    def start(self) -> None:
        self._start_done, self._start_time = self.count(), time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._report()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._report()

    def _report(self) -> None:
        done = self.count()
        elapsed = max(time.perf_counter() - self._start_time, 1e-9)
        rate = (done - self._start_done) * self.labels_per_unit / elapsed
        log.info("labels: %d/%d units, %.0f labels/s", done, self.total, rate)
        if self.progress is not None:
            self.progress(done, self.total)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: run (or resume) one label job and print the store URL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", required=True, help="tokens artifact URL")
    parser.add_argument("--teacher", required=True, help="teacher artifact URL")
    parser.add_argument("--root", required=True, help="root URL under which the store is created")
    parser.add_argument("--spec", default="{}", help="LabelSpec as JSON")
    parser.add_argument("--beam", default="{}", help="BeamConfig as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = LabelSpec.model_validate(json.loads(args.spec))
    ref = materialize_labels(args.tokens, args.teacher, spec, BeamConfig.model_validate(json.loads(args.beam)),
                             args.root)
    print(ref.url)


if __name__ == "__main__":
    main()
