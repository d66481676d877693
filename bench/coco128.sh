#!/usr/bin/env bash
# Baseline CAM pipeline on the real photographs of ../shared/data/coco128-voc with
# EfficientNet-Lite0: trains, makes CAMs, scores the seeds (threshold sweep), refines with and
# without CRF at the best seed threshold, and logs wall time and peak memory of every step to
# $RUN/times.txt. Run by hand from the repository root:  bash bench/coco128.sh
set -euo pipefail
DATA=${DATA:-../shared/data/coco128-voc}
RUN=${RUN:-bench/runs/coco128-baseline}
EPOCHS=${EPOCHS:-20}
CROP=${CROP:-448}
DEVICE=${DEVICE:-auto}
SPLIT=$DATA/ImageSets/Segmentation/train.txt
GT=$DATA/SegmentationClass
mkdir -p "$RUN"
step() {  # step NAME COMMAND...: run it, append "NAME wall S s, peak RSS K KB" to times.txt
  local name=$1
  shift
  /usr/bin/time -f "$name wall %e s, peak RSS %M KB" -a -o "$RUN/times.txt" "$@"
}
step train-cls igcam train-cls --run "$RUN" --voc "$DATA" --backbone efficientnet-lite0 \
  --epochs "$EPOCHS" --crop "$CROP" --batch-size 8 --device "$DEVICE"
step cam igcam cam --run "$RUN" --voc "$DATA" --device "$DEVICE"
step eval-seed igcam eval --cams "$RUN/cam" --gt "$GT" --split "$SPLIT" \
  --out "$RUN/eval/seed.json"
T=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['threshold'])" \
  "$RUN/eval/seed.json")
for refiner in none crf; do
  step "refine-$refiner" igcam refine --run "$RUN" --threshold "$T" --method "$refiner" \
    --workers 2 --out "$RUN/refine-$refiner"
  step "eval-$refiner" igcam eval --pred "$RUN/refine-$refiner" --gt "$GT" --split "$SPLIT" \
    --out "$RUN/eval/mask-$refiner.json"
done
cat "$RUN/times.txt"
