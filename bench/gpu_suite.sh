#!/usr/bin/env bash
# Every GPU check and figure of the README's benchmark table in one call (about 8 minutes on one H100),
# for a bare GPU host with PyTorch but none of our other packages: run from the repository root, with
# the wheels of bench/fetch_gpu_wheels.sh in .whl/ when the host lacks Beam/Zarr/pydantic.
#   bash bench/gpu_suite.sh            # results: $OUT (or ./bench-out)/bench.jsonl, tests.log, gpu.txt
# Each part has its own time limit, so one slow part cannot starve the others.
set -uo pipefail
out=${OUT:-bench-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 SMT_PROGRESS=0
py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

part() {  # part SECONDS NAME COMMAND...: run, keep the JSON line(s) in bench.jsonl, the log beside
  local limit=$1 name=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  grep -h '^{' "$out/$name.log" >>"$out/bench.jsonl" || true
  [ $rc -eq 0 ] || { echo "$name: exit $rc"; tail -5 "$out/$name.log"; }
}

# 1. the GPU paths are correct (bf16 labels vs fp32, stages on CUDA, device-side batches)
timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_label_store.py \
  tests/test_layers_teacher.py tests/test_steps.py 2>&1 | tail -15 | tee "$out/tests.log"

# 2. label generation, published teacher: encoder alone (eager, compiled), then end to end through Beam
part 60 encoder_eager $py bench/bench_labels.py --device cuda --encoder-labels 65536 --batch-size 1024 --skip-pipeline
part 150 encoder_compiled $py bench/bench_labels.py --device cuda --encoder-labels 131072 --batch-size 1024 \
  --skip-pipeline --compile
part 150 labels_pipeline $py bench/bench_labels.py --device cuda --encoder-labels 1024 --batch-size 1024 \
  --windows 256 --shard-windows 16 --trajectory-len 256 --runner DirectRunner --workers 2 --root /tmp/smt-labels \
  --reader-windows 256 --reader-batch 4096
store=$(ls -d /tmp/smt-labels/labels-* 2>/dev/null | head -1)

# 3. training, published Transformer updater: SMT compute-only and from the store, DMT, BPTT
part 120 train_published $py bench/bench_train.py --device cuda --batch 4096 --steps 10 --warmup 3 \
  ${store:+--store "$store"}
part 60 train_batch128 $py bench/bench_train.py --device cuda --batch 128 --steps 10 --warmup 3 --skip dmt bptt
echo "results in $out/bench.jsonl"
