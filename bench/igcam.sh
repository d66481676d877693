#!/usr/bin/env bash
# IG-CAM ablation on ../shared/data/coco128-voc, on top of the baseline run of bench/coco128.sh
# (same run directory, its stage-1 classifier). For every variant: CAMs, the seed threshold
# sweep, DenseCRF masks at the best threshold and their score; wall time and peak memory of
# every step go to $RUN/times-igcam.txt. A variant whose eval report exists is skipped, so the
# script resumes. Run by hand from the repository root:  bash bench/igcam.sh
set -euo pipefail
DATA=${DATA:-../shared/data/coco128-voc}
RUN=${RUN:-bench/runs/coco128-baseline}
DEVICE=${DEVICE:-auto}
SCALES=${SCALES:-1.0,0.5,1.5}
STAGE2_EPOCHS=${STAGE2_EPOCHS:-8}
SPLIT=$DATA/ImageSets/Segmentation/train.txt
GT=$DATA/SegmentationClass
LOG=$RUN/times-igcam.txt
step() {  # step NAME COMMAND...: run it, append "NAME wall S s, peak RSS K KB" to the log
  local name=$1
  shift
  /usr/bin/time -f "$name wall %e s, peak RSS %M KB" -a -o "$LOG" "$@"
}
variant() {  # variant NAME CAM-OPTIONS...: CAMs into $RUN/cam-NAME, seed sweep, CRF masks
  local name=$1
  shift
  [ -f "$RUN/eval/mask-$name-crf.json" ] && return
  step "cam-$name" igcam cam --run "$RUN" --voc "$DATA" --scales "$SCALES" --device "$DEVICE" \
    --out "$RUN/cam-$name" "$@"
  step "eval-seed-$name" igcam eval --cams "$RUN/cam-$name" --gt "$GT" --split "$SPLIT" \
    --out "$RUN/eval/seed-$name.json"
  local t
  t=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['threshold'])" \
    "$RUN/eval/seed-$name.json")
  step "refine-$name" igcam refine --run "$RUN" --cams "$RUN/cam-$name" --threshold "$t" --crf \
    --workers 2 --out "$RUN/refine-$name-crf"
  igcam eval --pred "$RUN/refine-$name-crf" --gt "$GT" --split "$SPLIT" \
    --out "$RUN/eval/mask-$name-crf.json"
}
[ -d "$RUN/propose" ] || step propose igcam propose --run "$RUN" --voc "$DATA" --workers 2
[ -f "$RUN/influence/scores.csv" ] || step influence igcam influence --run "$RUN" --voc "$DATA" \
  --device "$DEVICE"
variant base
variant igcam-roi --method igcam --box-scores roi
variant igcam --method igcam
variant igcam-influence --method igcam --influence "$RUN/influence"
[ -f "$RUN/train-cls-stage2/classifier.pt" ] || step train-stage2 igcam train-cls --run "$RUN" \
  --voc "$DATA" --stage 2 --influence "$RUN/influence" --epochs "$STAGE2_EPOCHS" --crop 448 \
  --batch-size 8 --device "$DEVICE"
variant stage2 --checkpoint "$RUN/train-cls-stage2/classifier.pt"
variant stage2-igcam --method igcam --checkpoint "$RUN/train-cls-stage2/classifier.pt"
cat "$LOG"
