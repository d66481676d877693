#!/usr/bin/env bash
# Outputs of one code version, for comparing two versions on the same classifiers with
# bench/identity_compare.py. IGCAM is the command to run (default: igcam); a classifier folder
# already in $RUN is reused, so the second version runs on the first one's classifiers:
#   RUN=bench/runs/id-a IGCAM="python -m igcam_cli" bash bench/identity.sh
#   mkdir -p bench/runs/id-b/fpn && cp -r bench/runs/id-a/train-cls bench/runs/id-b/ \
#     && cp -r bench/runs/id-a/fpn/train-cls bench/runs/id-b/fpn/
#   RUN=bench/runs/id-b bash bench/identity.sh
#   python bench/identity_compare.py bench/runs/id-a bench/runs/id-b
# Part 1 is bench/coco128.sh's CAM -> seed -> refine chain on all 97 coco128-voc photos (a short
# classifier: identity needs the same weights, not good ones); part 2 runs every CAM method,
# influence and an FPN classifier on the first 12 photos.
set -euo pipefail
DATA=${DATA:-../shared/data/coco128-voc}
RUN=${RUN:?set RUN}
IGCAM=${IGCAM:-igcam}
DEVICE=cpu
SPLIT=$DATA/ImageSets/Segmentation/train.txt
GT=$DATA/SegmentationClass
SUB=${SUB:-$RUN/subset}  # the 12-photo subset; a second version may name the first's
mkdir -p "$RUN" "$SUB/ImageSets/Segmentation"
[ -e "$SUB/JPEGImages" ] || ln -s "$(realpath "$DATA/JPEGImages")" "$SUB/JPEGImages"
[ -e "$SUB/SegmentationClass" ] || ln -s "$(realpath "$GT")" "$SUB/SegmentationClass"
head -12 "$SPLIT" > "$SUB/ImageSets/Segmentation/train.txt"
ig() { $IGCAM "$@"; }
ig train-cls --run "$RUN" --voc "$DATA" --epochs 2 --crop 320 --batch-size 8 --device $DEVICE
ig cam --run "$RUN" --voc "$DATA" --device $DEVICE
ig eval --cams "$RUN/cam" --gt "$GT" --split "$SPLIT" --out "$RUN/eval/seed.json"
T=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['threshold'])" \
  "$RUN/eval/seed.json")
for refiner in none crf; do
  ig refine --run "$RUN" --threshold "$T" --method "$refiner" --workers 2 --out "$RUN/refine-$refiner"
  ig eval --pred "$RUN/refine-$refiner" --gt "$GT" --split "$SPLIT" \
    --out "$RUN/eval/mask-$refiner.json"
done
S=(--voc "$SUB" --device $DEVICE --scales 1.0,0.5)
ig propose --run "$RUN" --voc "$SUB" --workers 2
ig influence --run "$RUN" --voc "$SUB" --device $DEVICE
for method in igcam lpcam ccam cpmc lpcam+igcam; do
  ig cam --run "$RUN" "${S[@]}" --method "$method" --out "$RUN/m-$method"
done
ig cam --run "$RUN" "${S[@]}" --method igcam --influence "$RUN/influence" --out "$RUN/m-igcam-inf"
# ROI_OPT: the option's name in the version being run (--box-scores before the redesign).
ig cam --run "$RUN" "${S[@]}" --method igcam ${ROI_OPT:---igcam-box-scores} roi \
  --out "$RUN/m-igcam-roi"
ig train-cls --run "$RUN/fpn" --voc "$SUB" --fpn --epochs 1 --crop 256 --batch-size 4 \
  --device $DEVICE
ig influence --run "$RUN/fpn" --voc "$SUB" --device $DEVICE
ig cam --run "$RUN/fpn" "${S[@]}"
ig cam --run "$RUN/fpn" "${S[@]}" --fpn-attention influence --influence "$RUN/fpn/influence" \
  --out "$RUN/fpn/cam-attention"
ig refine --run "$RUN/fpn" --threshold 0.3 --out "$RUN/fpn/refine"
