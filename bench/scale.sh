#!/usr/bin/env bash
# Scale: wall time and peak memory of `igcam cam` (--scales 1.0) and `igcam refine --method crf`
# (--workers 1 and 2) as the image count grows (250, 500, 1,000 by default), with an existing
# classifier (Lite0 trained on voc-real's 20 VOC classes) so that no training is timed.
#
# The images: voc-real's 302 photos and coco128-voc's 97 with a VOC class (399 distinct, 20
# VOC classes), repeated in turn under new names (s0000_<id>, s0001_<id>, ...) until there
# are as many as the largest size, hard-linked (or copied) with their masks into a VOC layout
# under $SCALE_RUN/data; size N is the split nN, the first N names, so each size holds the
# smaller ones. Labels come from the masks, as for any VOC root.
#
# Per size: cam into $SCALE_RUN/cam-nN, then refine --workers W into $SCALE_RUN/refine-nN-wW
# (folders of an earlier run of the same size are removed first, so nothing is skipped).
# Wall time and peak RSS by /usr/bin/time (GNU time's %M: the largest single process, so with
# --workers 2 the two workers' sum can be up to twice that). Table in $SCALE_RUN/scale.md,
# raw lines in $SCALE_RUN/times.tsv.
#
# Run from the repository root on an otherwise idle machine:
#   OMP_NUM_THREADS=1 bash bench/scale.sh
# Smaller:  SIZES="10 20" OMP_NUM_THREADS=1 bash bench/scale.sh   (also prints an estimate of
# the default sizes' total time from what it measured)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-250 500 1000}
WORKERS=${WORKERS:-1 2}
SCALE_RUN=${SCALE_RUN:-bench/runs/scale}
CHECKPOINT=${CHECKPOINT:-bench/runs/voc-real/train-cls/classifier.pt}
VOC=${VOC:-../shared/data/voc-real}
COCO=${COCO:-../shared/data/coco128-voc}
DEVICE=${DEVICE:-cpu}
DEFAULT_SIZES="250 500 1000"
[ -f "$CHECKPOINT" ] || { echo "error: no classifier $CHECKPOINT (bench/voc-real.sh trains it)" >&2; exit 2; }
DATA=$SCALE_RUN/data
TSV=$SCALE_RUN/times.tsv
mkdir -p "$DATA/JPEGImages" "$DATA/SegmentationClass" "$DATA/ImageSets/Segmentation"

# The image list: every photo of both sets in turn, as many as the largest size.
largest=0
for n in $SIZES; do [ "$n" -gt "$largest" ] && largest=$n; done
sources=()
for root in "$VOC" "$COCO"; do
  while read -r id; do
    [ -n "$id" ] && sources+=("$root/@$id")
  done <"$root/ImageSets/Segmentation/train.txt"
done
names=()
for ((i = 0; i < largest; i++)); do
  entry=${sources[i % ${#sources[@]}]}
  root=${entry%/@*}
  id=${entry##*/@}
  name=$(printf 's%04d_%s' "$i" "$id")
  names+=("$name")
  for pair in "JPEGImages jpg" "SegmentationClass png"; do
    set -- $pair
    target=$DATA/$1/$name.$2
    [ -e "$target" ] || ln "$root/$1/$id.$2" "$target" 2>/dev/null || cp "$root/$1/$id.$2" "$target"
  done
done
for n in $SIZES; do
  printf '%s\n' "${names[@]:0:n}" >"$DATA/ImageSets/Segmentation/n$n.txt"
done
echo "scale: ${#sources[@]} distinct photos, $largest names in $DATA; sizes $SIZES;" \
  "refine workers $WORKERS; OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}; load $(cut -d' ' -f1-3 /proc/loadavg)"

timed() {  # timed IMAGES STEP WORKERS COMMAND...: one line of times.tsv
  local images=$1 step=$2 workers=$3
  shift 3
  echo "== $step, $images images, workers $workers: $*"
  /usr/bin/time -f "$images	$step	$workers	%e	%M" -a -o "$TSV" "$@"
}

if [ -f "$TSV" ]; then mv "$TSV" "$TSV.old"; fi
: >"$TSV"
for n in $SIZES; do
  rm -rf "$SCALE_RUN/cam-n$n" "$SCALE_RUN"/refine-n"$n"-w*
  timed "$n" cam - igcam cam --run "$SCALE_RUN" --voc "$DATA" --split "n$n" \
    --checkpoint "$CHECKPOINT" --scales 1.0 --device "$DEVICE" --out "$SCALE_RUN/cam-n$n"
  for w in $WORKERS; do
    timed "$n" refine-crf "$w" igcam refine --run "$SCALE_RUN" --cams "$SCALE_RUN/cam-n$n" \
      --method crf --workers "$w" --device "$DEVICE" --out "$SCALE_RUN/refine-n$n-w$w"
  done
done

python3 - "$TSV" "$SCALE_RUN/scale.md" "$SIZES" "$DEFAULT_SIZES" "$WORKERS" <<'EOF'
import sys

tsv, out, sizes, default, workers = sys.argv[1:]
rows = [line.rstrip("\n").split("\t") for line in open(tsv) if line.count("\t") == 4]
lines = ["| images | step | workers | wall s | s/image | peak RSS MB |",
         "|---|---|---|---|---|---|"]
rate = {}
for images, step, w, wall, rss in rows:
    n, seconds = int(images), float(wall)
    lines.append(f"| {n} | {step} | {w} | {seconds:.1f} | {seconds / n:.3f} | "
                 f"{int(rss) / 1024:.0f} |")
    rate[(step, w)] = (n, seconds)  # the largest size measured last
text = "\n".join(lines) + "\n"
if sizes.split() != default.split() and rate:
    # Per step: the fixed start-up cost and the per-image cost from the two largest sizes
    # measured (or the per-image rate of the one), extrapolated to the default sizes.
    by_step = {}
    for images, step, w, wall, _ in rows:
        by_step.setdefault((step, w), []).append((int(images), float(wall)))
    total = 0.0
    for points in by_step.values():
        points.sort()
        if len(points) >= 2 and points[-1][0] != points[-2][0]:
            (n1, t1), (n2, t2) = points[-2], points[-1]
            per = max((t2 - t1) / (n2 - n1), 0.0)
            fixed = max(t2 - per * n2, 0.0)
        else:
            n2, t2 = points[-1]
            per, fixed = t2 / n2, 0.0
        total += sum(fixed + per * int(n) for n in default.split())
    text += (f"\nEstimate for SIZES=\"{default}\" from these runs: about {total / 60:.0f} min "
             f"({total:.0f} s; start-up and per-image cost per step from the sizes above).\n")
open(out, "w").write(text)
print(text)
EOF
