# Shared by the bench scripts (sourced, not run). Needs DATA, RUN, DEVICE, SCALES and LOG set.
SPLIT=$DATA/ImageSets/Segmentation/train.txt
GT=$DATA/SegmentationClass
mkdir -p "$RUN"
step() {  # step NAME COMMAND...: run it, append "NAME wall S s, peak RSS K KB" to $LOG
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
  step "refine-$name" igcam refine --run "$RUN" --cams "$RUN/cam-$name" --threshold "$t" --method crf \
    --workers 2 --out "$RUN/refine-$name-crf"
  igcam eval --pred "$RUN/refine-$name-crf" --gt "$GT" --split "$SPLIT" \
    --out "$RUN/eval/mask-$name-crf.json"
}
