#!/usr/bin/env bash
# The learned walk on a CAM method's seeds (issue 29): for each pair of train-aff target
# thresholds in PAIRS, a boundary network trained on RUN/cam-METHOD, then refine rw, rw+crf
# (crf on the walked maps at their own best threshold) and, for the first pair, the walk's
# beta and steps in BETAS x STEPS; every result scored on DATA. Each pair gets a run directory
# of its own under RUN/walk-grid/ (train-aff writes RUN/train-aff), holding links to RUN's
# classifier and CAMs. crf on the seeds themselves is bench/voc-real.sh's mask-METHOD-crf.
# Run from the repository root after bench/voc-real.sh with METHOD in its METHODS:
#   RUN=bench/runs/voc-grad METHOD=lpcam bash bench/walk_grid.sh
set -euo pipefail
DATA=${DATA:-../shared/data/voc-real}
RUN=${RUN:-bench/runs/voc-real}
METHOD=${METHOD:-lpcam}
PAIRS=${PAIRS:-0.70,0.45 0.30,0.05}
BETAS=${BETAS:-}  # e.g. "8 12": beta values tried with the first pair's network
STEPS=${STEPS:-}  # e.g. "128 512"
DEVICE=${DEVICE:-auto}
LOG=$RUN/times.txt
SCALES=unused
source "$(dirname "$0")/lib.sh"
T=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['threshold'])" \
  "$RUN/eval/seed-$METHOD.json")
walk() {  # walk GRID NAME REFINE-OPTIONS...: rw with its maps kept, scored; crf on them
  local grid=$1 name=$2
  shift 2
  [ -f "$grid/eval/mask-$name+crf.json" ] && return
  step "grid-$(basename "$grid")-$name" igcam refine --run "$grid" --cams "$grid/cam-$METHOD" \
    --method rw --threshold "$T" --save-scores --workers 2 --device "$DEVICE" \
    --out "$grid/refine-$name" "$@"
  igcam eval --pred "$grid/refine-$name" --gt "$GT" --split "$SPLIT" \
    --out "$grid/eval/mask-$name.json"
  igcam eval --cams "$grid/refine-$name/scores" --gt "$GT" --split "$SPLIT" \
    --out "$grid/eval/scores-$name.json"
  local t
  t=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report']['threshold'])" \
    "$grid/eval/scores-$name.json")
  step "grid-$(basename "$grid")-$name+crf" igcam refine --run "$grid" \
    --cams "$grid/refine-$name/scores" --method crf --threshold "$t" --workers 2 \
    --out "$grid/refine-$name+crf"
  igcam eval --pred "$grid/refine-$name+crf" --gt "$GT" --split "$SPLIT" \
    --out "$grid/eval/mask-$name+crf.json"
}
first=
for pair in $PAIRS; do
  fg=${pair%,*}
  bg=${pair#*,}
  grid=$RUN/walk-grid/fg$fg-bg$bg
  mkdir -p "$grid/eval"
  ln -sfn "$(realpath "$RUN/train-cls")" "$grid/train-cls"
  ln -sfn "$(realpath "$RUN/cam-$METHOD")" "$grid/cam-$METHOD"
  [ -f "$grid/train-aff/affinity.pt" ] || step "grid-$(basename "$grid")-train-aff" \
    igcam train-aff --run "$grid" --cams "$grid/cam-$METHOD" --fg-threshold "$fg" \
    --bg-threshold "$bg" --device "$DEVICE" --workers 2
  walk "$grid" rw
  first=${first:-$grid}
done
for beta in $BETAS; do walk "$first" "rw-beta$beta" --rw-beta "$beta"; done
for steps in $STEPS; do walk "$first" "rw-steps$steps" --rw-steps "$steps"; done
python3 - "$RUN" "$METHOD" <<'PY' | tee "$RUN/walk-grid/table.md"
import json, sys
from pathlib import Path
run, method = Path(sys.argv[1]), sys.argv[2]
def miou(path):
    return f"{100 * json.loads(path.read_text())['report']['miou']:.1f}" if path.exists() else "-"
seed = json.loads((run / "eval" / f"seed-{method}.json").read_text())["report"]
print(f"{method} seeds: {100 * seed['miou']:.1f} at t = {seed['threshold']}; crf on them: "
      f"{miou(run / 'eval' / f'mask-{method}-crf.json')}\n")
print("| targets (fg, bg) | walk | rw masks at seed t | walked maps, own best t (mIoU) | rw+crf |")
print("|---|---|---|---|---|")
for grid in sorted((run / "walk-grid").glob("fg*")):
    for scores in sorted((grid / "eval").glob("scores-*.json")):
        name = scores.stem.removeprefix("scores-")
        own = json.loads(scores.read_text())["report"]
        fg, bg = grid.name.removeprefix("fg").split("-bg")
        print(f"| {fg}, {bg} | {name} | {miou(grid / 'eval' / f'mask-{name}.json')} | "
              f"{own['threshold']} ({100 * own['miou']:.1f}) | "
              f"{miou(grid / 'eval' / f'mask-{name}+crf.json')} |")
PY
