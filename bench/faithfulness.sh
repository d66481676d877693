#!/usr/bin/env bash
# Faithfulness scores (igcam eval --faithfulness) of every CAM folder of a bench/voc-real.sh run
# (RUN/cam and RUN/cam-METHOD), on an evenly spread subset of N of its photos, then the table
# beside each method's seed and DenseCRF mIoU and the rank correlation over methods of each
# score with mIoU (bench/faith_table.py).  Run from the repository root:
#   RUN=bench/runs/voc-grad DATA=../shared/data/voc-real N=40 bash bench/faithfulness.sh
set -euo pipefail
DATA=${DATA:-../shared/data/voc-real}
RUN=${RUN:-bench/runs/voc-real}
N=${N:-40}
DEVICE=${DEVICE:-auto}
MAX_SIDE=${MAX_SIDE:-448}
LOG=$RUN/times.txt
SCALES=unused
source "$(dirname "$0")/lib.sh"
subset=$RUN/eval/faith-ids.txt
python3 - "$SPLIT" "$N" > "$subset" <<'PY'
import sys
ids = [line.split()[0] for line in open(sys.argv[1]) if line.strip()]
n = min(int(sys.argv[2]), len(ids))
print("\n".join(ids[round(i * len(ids) / n)] for i in range(n)))
PY
for folder in "$RUN"/cam "$RUN"/cam-*; do
  python3 -c "import json,sys; sys.exit(not json.load(open(sys.argv[1])).get('complete'))" \
    "$folder/manifest.json" 2>/dev/null || continue  # unfinished CAMs are left for later
  name=$(basename "$folder")
  name=${name#cam-}
  [ -f "$RUN/eval/faith-$name.json" ] && continue
  step "faith-$name" igcam eval --faithfulness --run "$RUN" --cams "$folder" --split "$subset" \
    --faith-max-side "$MAX_SIDE" --device "$DEVICE" --out "$RUN/eval/faith-$name.json"
done
python3 "$(dirname "$0")/faith_table.py" "$RUN" | tee "$RUN/faith-table.md"
