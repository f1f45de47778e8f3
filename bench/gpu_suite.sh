#!/usr/bin/env bash
# Every GPU check and figure of the README's benchmark table in one call (about 8 minutes on one H100),
# for a bare GPU host with PyTorch but none of our other packages: run from the repository root, with
# the wheels of bench/fetch_gpu_wheels.sh in .whl/ when the host lacks Beam/Zarr/pydantic.
#   bash bench/gpu_suite.sh            # results: $OUT (or ./bench-out)/bench.jsonl, tests.log, gpu.txt
#   SUITE_SMOKE=1 bash bench/gpu_suite.sh   # the same steps on the CPU at toy sizes (checks the script)
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
if [ "${SUITE_SMOKE:-0}" = 1 ]; then  # toy sizes on the CPU
  dev=cpu big=256 mid=64 windows=8 shard=4 traj=16 tbatch=64
  teacher=(--width 64 --heads 4 --encoder-depth 2 --decoder-depth 1 --memory-tokens 4 --memory-dim 64
           --context-len 32 --future-len 8)
  updater=(--width 64 --depth 2 --heads 4 --K 4 --D 64 --decoder-depth 1 --tf 8 --td 16 --k 4 --dmt-batch 4
           --bptt-batch 8 --bptt-T 8)
else  # the published sizes (the model flags' defaults)
  dev=cuda big=131072 mid=65536 windows=256 shard=16 traj=256 tbatch=4096 teacher=() updater=()
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
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
part 60 encoder_eager $py bench/bench_labels.py --device $dev "${teacher[@]}" --encoder-labels $mid \
  --batch-size 1024 --skip-pipeline
part 150 encoder_compiled $py bench/bench_labels.py --device $dev "${teacher[@]}" --encoder-labels $big \
  --batch-size 1024 --skip-pipeline --compile
rm -rf /tmp/smt-labels && mkdir -p /tmp/smt-labels
part 150 labels_pipeline $py bench/bench_labels.py --device $dev "${teacher[@]}" --encoder-labels 1024 \
  --batch-size 1024 --windows $windows --shard-windows $shard --trajectory-len $traj --runner DirectRunner \
  --workers 2 --root /tmp/smt-labels --reader-windows $windows --reader-batch $tbatch
store=$($py -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline()).get("store", ""))' \
  <(grep -h '^{' "$out/labels_pipeline.log") 2>/dev/null)  # the Beam-made store, not the reader's random one

# 3. training, published Transformer updater: SMT compute-only and from the store, DMT, BPTT
part 120 train_published $py bench/bench_train.py --device $dev "${updater[@]}" --batch $tbatch --steps 10 \
  --warmup 3 ${store:+--store "$store"}
part 60 train_batch128 $py bench/bench_train.py --device $dev "${updater[@]}" --batch 128 --steps 10 --warmup 3 \
  --skip dmt bptt
echo "results in $out/bench.jsonl"
