#!/usr/bin/env bash
# The CAM methods side by side on ../shared/data/coco128-voc (issue 4), in the baseline's run
# directory of bench/coco128.sh and on its stage-1 classifier: cam, lpcam, ccam, cpmc, igcam,
# then the self-supervised (MainNet/SupportNet) classifier under cam and under every method.
# Every variant: CAMs at scales 1.0/0.5/1.5 + flip, the seed threshold sweep, DenseCRF masks at
# its best threshold; wall time and peak memory of every step go to $RUN/times-methods.txt.
# Variants already scored are skipped, so the script resumes (and reuses bench/igcam.sh's
# base and igcam variants). Run by hand from the repository root:  bash bench/methods.sh
set -euo pipefail
DATA=${DATA:-../shared/data/coco128-voc}
RUN=${RUN:-bench/runs/coco128-baseline}
DEVICE=${DEVICE:-auto}
SCALES=${SCALES:-1.0,0.5,1.5}
SELFSUP_EPOCHS=${SELFSUP_EPOCHS:-8}
LOG=$RUN/times-methods.txt
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
[ -d "$RUN/propose" ] || step propose igcam propose --run "$RUN" --voc "$DATA" --workers 2
variant base
variant lpcam --method lpcam
variant ccam --method ccam
variant cpmc --method cpmc
variant igcam --method igcam
variant lpcam-igcam --method lpcam+igcam
[ -f "$RUN/train-cls-selfsup/classifier.pt" ] || step train-selfsup igcam train-cls --run "$RUN" \
  --voc "$DATA" --stage self-sup --epochs "$SELFSUP_EPOCHS" --crop 448 --batch-size 8 \
  --device "$DEVICE"
SELFSUP=$RUN/train-cls-selfsup/classifier.pt
variant selfsup --checkpoint "$SELFSUP"
for method in ${SELFSUP_METHODS:-igcam}; do
  variant "selfsup-${method//+/-}" --method "$method" --checkpoint "$SELFSUP"
done
cat "$LOG"
