"""Beam PipelineOptions from a `BeamConfig`: local runners by default, any Beam runner via standard flags.

Local (no cluster, works offline):

    beam: {runner: FnApiRunner, num_workers: 1}        # one process, fastest start (~0.5 s)
    beam: {runner: FnApiRunner, num_workers: 2}        # 2 worker processes (multi_processing)
    beam: {runner: DirectRunner, num_workers: 2}       # same engine; DirectRunner first tries Prism,
                                                       # whose binary download fails offline (harmless)

Local runners get `--direct_num_workers=N --direct_running_mode=multi_processing` (N > 1) or
`in_memory` (N == 1). Each worker process loads the teacher once (DoFn.setup) and takes whole shards.

Clusters: put the runner's own flags in `beam.options`; they are passed through unchanged (a flag given
there wins over the defaults above, because Beam's parser keeps the last value):

    Flink:    runner: FlinkRunner,    options: [--flink_master=HOST:8081, --environment_type=LOOPBACK]
    Spark:    runner: SparkRunner,    options: [--spark_master_url=spark://HOST:7077, --environment_type=LOOPBACK]
    Dataflow: runner: DataflowRunner, options: [--project=P, --region=R, --temp_location=gs://B/tmp]
    Dask:     runner: DaskRunner,     dask_address: tcp://HOST:8786                  (pip install '.[dask]')

Dask (the cluster engine we test, tests/test_dask.py): `DaskRunner` is Beam's
apache_beam.runners.dask.dask_runner.DaskRunner; every work unit is its own Dask task
(`--dask_partition_size=1` unless you pass one: Beam's default of 128 puts a small job on one worker).
Dask ignores --setup_file: install this project on every worker (`pip install -c constraints.txt '.[dask]'`
in the workers' environment) before starting them.

Workers need this project. With `--environment_type=LOOPBACK` the launcher process is the worker, so
nothing is shipped. Otherwise, unless you pass one of --setup_file, --extra_package(s),
--sdk_container_image or --requirements_file yourself, we add `--setup_file=<repo>/pyproject.toml`:
Beam 2.77 builds an sdist of the pyproject project with `python -m build --sdist` (pip install build)
and installs it on every worker. Alternatives: `python -m build --sdist` once, then
`--extra_package=dist/smt_pipeline-<version>.tar.gz`; or a custom container with the project installed
(`--sdk_container_image=…`). Remote workers must reach the output root, so use a shared URL (gs://,
s3://, hdfs://) as `root` for cluster runners; a local path only works with local runners.
"""

from __future__ import annotations

import logging
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions

from schemas.config import BeamConfig

log = logging.getLogger("smt.labels")

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam has no short name for it
LOCAL_RUNNERS = frozenset({"DirectRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"})
STAGING_FLAGS = ("--setup_file", "--extra_package", "--sdk_container_image", "--requirements_file")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def is_local_runner(beam: BeamConfig) -> bool:
    """True for runners whose workers are processes on this machine (they see local paths)."""
    return beam.runner in LOCAL_RUNNERS


def runner_flags(beam: BeamConfig, job_name: str | None = None) -> list[str]:
    """The command-line flags `pipeline_options` builds; useful to log or to copy into a shell."""
    flags = [f"--runner={DASK_RUNNER if beam.runner in ('DaskRunner', DASK_RUNNER) else beam.runner}"]
    if beam.runner in ("DaskRunner", DASK_RUNNER):
        if beam.dask_address and not _has(beam.options, "--dask_client_address"):
            flags.append(f"--dask_client_address={beam.dask_address}")
        if not _has(beam.options, "--dask_partition_size"):
            flags.append("--dask_partition_size=1")
    elif is_local_runner(beam):
        mode = "multi_processing" if beam.num_workers > 1 else "in_memory"
        flags += [f"--direct_num_workers={beam.num_workers}", f"--direct_running_mode={mode}"]
        if not _has(beam.options, "--default_sdk_harness_log_level"):
            flags.append("--default_sdk_harness_log_level=WARNING")  # local workers' INFO lines are noise
    else:
        flags += _staging_flags(beam.options)
        if job_name and not _has(beam.options, "--job_name"):
            flags.append(f"--job_name={job_name}")
    return flags + list(beam.options)


def pipeline_options(beam: BeamConfig, job_name: str | None = None) -> PipelineOptions:
    """PipelineOptions for `beam` (see the module docstring for what each runner gets)."""
    flags = runner_flags(beam, job_name)
    log.info("beam flags: %s", " ".join(flags))
    return PipelineOptions(flags)


def _has(options: list[str], flag: str) -> bool:
    return any(o == flag or o.startswith(flag + "=") or o.startswith(flag + "s=") for o in options)


def _staging_flags(options: list[str]) -> list[str]:
    """Ship the project to remote workers unless the user already chose how (or workers are local)."""
    if any(_has(options, f) for f in STAGING_FLAGS) or "--environment_type=LOOPBACK" in options:
        return []
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if not pyproject.exists():
        log.warning("no pyproject.toml beside the installed package: pass --extra_package or a container")
        return []
    return [f"--setup_file={pyproject}"]
