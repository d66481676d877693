#!/usr/bin/env bash
# Every CAM method and every refiner side by side on ../shared/data/voc-real (302 VOC 2012
# train photos, the WSSS protocol: classifier trained on their labels, masks made and scored for
# the same images), in one run directory with one classifier. Seeds are scored over a threshold
# sweep; each refiner runs on the plain CAMs at the seed sweep's best threshold, and the walks
# also keep their propagated maps (--save-scores) so that their own threshold sweep is scored
# too. Each of METHODS makes its own CAMs (RUN/cam-METHOD), scored by their sweep and by
# DenseCRF masks at its best threshold. Wall time and peak memory of every step go to
# $RUN/times.txt, the table to $RUN/table.md. Finished steps are skipped, so the script
# resumes, and it can run in the directory of `igcam run` (RUN=...) on that run's classifier.
# Run from the repository root:  bash bench/voc-real.sh
set -euo pipefail
DATA=${DATA:-../shared/data/voc-real}
RUN=${RUN:-bench/runs/voc-real}
BACKBONE=${BACKBONE:-efficientnet-lite0}
EPOCHS=${EPOCHS:-10}
DEVICE=${DEVICE:-auto}
REFINERS=${REFINERS:-none crf par rw rw+crf}
METHODS=${METHODS-lpcam ccam cpmc igcam}  # METHODS= for none
LOG=$RUN/times.txt
SCALES=${SCALES:-1.0,0.5,1.5,2.0}
source "$(dirname "$0")/lib.sh"
[ -f "$RUN/train-cls/classifier.pt" ] || step train-cls igcam train-cls --run "$RUN" \
  --voc "$DATA" --backbone "$BACKBONE" --epochs "$EPOCHS" --crop 448 --batch-size 8 \
  --device "$DEVICE"
[ -f "$RUN/cam/manifest.json" ] || step cam igcam cam --run "$RUN" --voc "$DATA" \
  --scales "$SCALES" --device "$DEVICE"
[ -f "$RUN/eval/seed.json" ] || step eval-seed igcam eval --voc "$DATA" --cams "$RUN/cam" \
  --out "$RUN/eval/seed.json"
T=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['threshold'])" \
  "$RUN/eval/seed.json")
case " $REFINERS " in *" rw"*)
  [ -f "$RUN/train-aff/affinity.pt" ] || step train-aff igcam train-aff --run "$RUN" \
    --device "$DEVICE" --workers 2 ;;
esac
for method in $REFINERS; do
  [ -f "$RUN/eval/mask-$method.json" ] && continue
  extra=()
  case $method in rw|par) extra=(--save-scores) ;; esac
  step "refine-$method" igcam refine --run "$RUN" --method "$method" --threshold "$T" \
    --workers 2 --device "$DEVICE" --out "$RUN/refine-$method" "${extra[@]}"
  igcam eval --voc "$DATA" --pred "$RUN/refine-$method" --out "$RUN/eval/mask-$method.json"
  if [ -d "$RUN/refine-$method/scores" ]; then
    igcam eval --voc "$DATA" --cams "$RUN/refine-$method/scores" \
      --out "$RUN/eval/scores-$method.json"
  fi
done
case " $METHODS " in *igcam*)
  [ -f "$RUN/propose/manifest.json" ] || step propose igcam propose --run "$RUN" \
    --voc "$DATA" --workers 2 ;;
esac
for method in $METHODS; do
  variant "$method" --method "$method"
done
python3 "$(dirname "$0")/table.py" "$RUN" | tee "$RUN/table.md"
