#!/usr/bin/env bash
# The segmentation network on a run's pseudo-masks (issue 25): train-seg on MASKS, then
# predict on the same photos with the image labels (plain, and refined by DenseCRF: one
# self-training round's masks), and without them (what the network does on photos without
# tags), each scored on DATA beside the masks it learnt from. Wall time and peak memory go to
# $RUN/times.txt, the table to $RUN/seg-table.md. Finished steps are skipped.
#   RUN=bench/runs/voc-grad MASKS=bench/runs/voc-grad/refine-crf bash bench/seg.sh
set -euo pipefail
DATA=${DATA:-../shared/data/voc-real}
RUN=${RUN:-bench/runs/voc-real}
MASKS=${MASKS:-$RUN/refine-lpcam-crf}
DEVICE=${DEVICE:-auto}
LOG=$RUN/times.txt
SCALES=unused
source "$(dirname "$0")/lib.sh"
[ -f "$RUN/train-seg/segmenter.pt" ] || step train-seg igcam train-seg --run "$RUN" \
  --voc "$DATA" --masks "$MASKS" --device "$DEVICE" --loader-workers 1
igcam eval --pred "$MASKS" --gt "$GT" --split "$SPLIT" --out "$RUN/eval/seg-masks.json"
for variant in labels crf nolabels; do
  [ -f "$RUN/eval/seg-$variant.json" ] && continue
  case $variant in
    labels) extra=() ;;
    crf) extra=(--refine crf) ;;
    nolabels) extra=(--no-use-labels) ;;
  esac
  step "predict-$variant" igcam predict --run "$RUN" --voc "$DATA" --device "$DEVICE" \
    --out "$RUN/predict-$variant" "${extra[@]}"
  igcam eval --pred "$RUN/predict-$variant" --gt "$GT" --split "$SPLIT" \
    --out "$RUN/eval/seg-$variant.json"
done
python3 - "$RUN" <<'PY' | tee "$RUN/seg-table.md"
import json, re, sys
from pathlib import Path
run = Path(sys.argv[1])
times = {m[1]: (float(m[2]), int(m[3]) / 1e6) for line in (run / "times.txt").read_text().splitlines()
         if (m := re.match(r"(\S+) wall ([\d.]+) s, peak RSS (\d+) KB", line))}
def row(name, label, step=None):
    report = json.loads((run / "eval" / f"seg-{name}.json").read_text())["report"]
    wall, rss = times.get(step, (float("nan"), float("nan"))) if step else (float("nan"),) * 2
    per = f"{wall / report['images']:.2f}" if step in times else "-"
    gb = f"{rss:.1f}" if step in times else "-"
    print(f"| {label} | {100 * report['miou']:.1f} | {per} | {gb} |")
print("| masks | mIoU | s/image | peak RSS GB |\n|---|---|---|---|")
row("masks", "the pseudo-masks train-seg learnt from")
row("labels", "predict, image labels suppress absent classes", "predict-labels")
row("crf", "predict --refine crf (one self-training round)", "predict-crf")
row("nolabels", "predict --no-use-labels (the network alone)", "predict-nolabels")
if "train-seg" in times:
    wall, rss = times["train-seg"]
    print(f"\ntrain-seg: {wall:.0f} s, peak RSS {rss:.1f} GB")
PY
