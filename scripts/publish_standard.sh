#!/usr/bin/env bash
# The GPU boards (issue 14.4): every image method at budget `standard` on digits, with the
# ablations the image claims compare, and on CIFAR-10 through the datasets path where it is
# already cached on the machine (nothing is downloaded); the noise floors; the boards and the
# claims report; and `--device cuda` wall times of the default suite at `smoke` and `small`,
# for the README beside the CPU ones.
#
#   scripts/publish_standard.sh OUT [SEEDS]
#
# Run it from a clean checkout (records carry the git revision; boards refuse -dirty ones) on a
# machine with a CUDA GPU, writing OUT outside the work tree; then copy OUT's records into
# leaderboards/records/standard/ and its boards into leaderboards/standard/ (the last lines it
# prints say how). Resumable like publish_small.sh: a second call skips the ok records in OUT.
#
# Environment: DRY_RUN=1 prints the commands and runs nothing; GMBENCH_DEVICE (default cuda)
# and BUDGET (default standard) rehearse it elsewhere, e.g. GMBENCH_DEVICE=cpu BUDGET=smoke.
#
# Status: not run yet. No GPU machine has been lent to this project's sessions; the README's
# "Performance" section says so, and nothing in leaderboards/ claims GPU numbers.
set -uo pipefail
OUT=${1:?usage: scripts/publish_standard.sh OUT [SEEDS]}
SEEDS=${2:-3x}
DEVICE=${GMBENCH_DEVICE:-cuda}
BUDGET=${BUDGET:-standard}
DRY=${DRY_RUN:-0}
WORST=0

say() { printf '+ %s\n' "$*"; }
step() {  # one command; a failing step is remembered, the script goes on (records say why)
  say "$@"
  [ "$DRY" = 1 ] && return 0
  "$@"
  local rc=$?
  [ $rc -gt $WORST ] && WORST=$rc
  return 0
}

if [ "$DRY" != 1 ] && [ "${DEVICE%%:*}" = cuda ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "publish_standard.sh: no CUDA device here; these are the GPU boards (GMBENCH_DEVICE=cpu BUDGET=smoke rehearses them)" >&2
    exit 2
  }
fi

run() {
  step gmbench run --budget "$BUDGET" --device "$DEVICE" --seeds "$SEEDS" --resume -q --allow-failures \
    --out "$OUT/records" "$@"
}

IMAGE=digits
# 1. every image method's defaults, then the ablations the image claims compare (as publish_small.sh)
run --plugins all --datasets $IMAGE
run --plugins flow-matching --datasets $IMAGE --set flow-matching.path=vp
run --plugins rectified-flow --datasets $IMAGE --set rectified-flow.reflow=false
run --plugins consistency --datasets $IMAGE --set consistency.mode=cd
run --plugins glow --datasets $IMAGE --set glow.coupling=additive
run --plugins realnvp --datasets $IMAGE --set realnvp.coupling=additive
run --plugins dc-ae --datasets $IMAGE --set dc-ae.f=8
run --plugins dc-ae --datasets $IMAGE --set dc-ae.f=8 --set dc-ae.residual=false
run --plugins mar --datasets $IMAGE --set mar.loss=ce
run --plugins mar --datasets $IMAGE --set mar.order=raster
run --plugins vae --datasets $IMAGE --set vae.iw_samples=64
step gmbench floor --datasets $IMAGE --budget "$BUDGET" --seeds "$SEEDS" --device "$DEVICE" --out "$OUT/records"

# 2. CIFAR-10 only where the datasets cache already holds it (HF_DATASETS_OFFLINE: no download)
if [ "$DRY" = 1 ] || HF_DATASETS_OFFLINE=1 python -c "
import sys
from gmbench.data import make_dataset
from gmbench.plugins import Registries
try:
    make_dataset(Registries().datasets, 'cifar10').split('test')
except Exception as exc:
    print(f'cifar10 is not cached here ({type(exc).__name__}): skipped', file=sys.stderr); sys.exit(1)
"; then
  HF_DATASETS_OFFLINE=1 run --plugins all --datasets cifar10
  step env HF_DATASETS_OFFLINE=1 gmbench floor --datasets cifar10 --budget "$BUDGET" --seeds "$SEEDS" --device "$DEVICE" --out "$OUT/records"
fi

# 3. boards and the claims report from those records
step gmbench leaderboard "$OUT/records" --out "$OUT/boards"
step gmbench claims "$OUT/records" --out "$OUT/boards/claims.md"

# 4. the default suite's wall time on this device (README "Performance", beside the CPU numbers)
for suite_budget in smoke small; do
  say "time gmbench run --plugins all --budget $suite_budget --device $DEVICE --out $OUT/suite-$suite_budget"
  if [ "$DRY" != 1 ]; then
    start=$(date +%s)
    gmbench run --plugins all --budget $suite_budget --device "$DEVICE" -q --allow-failures --out "$OUT/suite-$suite_budget"
    echo "suite $suite_budget on $DEVICE: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/suite-times.txt"
  fi
done

echo "publish: cp $OUT/records/*.json leaderboards/records/$BUDGET/ && cp -r $OUT/boards/. leaderboards/$BUDGET/"
exit $WORST
