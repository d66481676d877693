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
LOG=$RUN/times-igcam.txt
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
[ -d "$RUN/propose" ] || step propose igcam propose --run "$RUN" --voc "$DATA" --workers 2
[ -f "$RUN/influence/scores.csv" ] || step influence igcam influence --run "$RUN" --voc "$DATA" \
  --device "$DEVICE"
variant base
variant igcam-roi --method igcam --igcam-box-scores roi
variant igcam --method igcam
variant igcam-influence --method igcam --influence "$RUN/influence"
[ -f "$RUN/train-cls-stage2/classifier.pt" ] || step train-stage2 igcam train-cls --run "$RUN" \
  --voc "$DATA" --stage 2 --influence "$RUN/influence" --epochs "$STAGE2_EPOCHS" --crop 448 \
  --batch-size 8 --device "$DEVICE"
variant stage2 --checkpoint "$RUN/train-cls-stage2/classifier.pt"
variant stage2-igcam --method igcam --checkpoint "$RUN/train-cls-stage2/classifier.pt"
# FPN: its own classifier (same recipe as bench/coco128.sh's stage 1, plus --fpn) in $RUN/fpn
FPN=$RUN/fpn
[ -f "$FPN/train-cls/classifier.pt" ] || step train-fpn igcam train-cls --run "$FPN" --voc "$DATA" \
  --fpn --epochs "${EPOCHS:-20}" --crop 448 --batch-size 8 --device "$DEVICE"
[ -f "$FPN/influence/scores.csv" ] || step influence-fpn igcam influence --run "$FPN" \
  --voc "$DATA" --device "$DEVICE"
variant fpn --checkpoint "$FPN/train-cls/classifier.pt"
variant fpn-last --checkpoint "$FPN/train-cls/classifier.pt" --fpn-levels last
variant fpn-attention --checkpoint "$FPN/train-cls/classifier.pt" --fpn-attention influence \
  --influence "$FPN/influence"
variant fpn-igcam --method igcam --checkpoint "$FPN/train-cls/classifier.pt"
# Control for the FPN rows: the plain classifier with the FPN head's prior-started logit bias
BIAS=$RUN/bias
[ -f "$BIAS/train-cls/classifier.pt" ] || step train-bias igcam train-cls --run "$BIAS" \
  --voc "$DATA" --head-bias --epochs "${EPOCHS:-20}" --crop 448 --batch-size 8 --device "$DEVICE"
variant bias --checkpoint "$BIAS/train-cls/classifier.pt"
variant bias-igcam --method igcam --checkpoint "$BIAS/train-cls/classifier.pt"
cat "$LOG"
