#!/usr/bin/env bash
# Check one of the README's install paths from nothing: a clone of the committed tree and a new venv.
#
#   scripts/check_install.sh default   # pip resolves PyTorch from your index (CUDA build on Linux x86-64)
#   scripts/check_install.sh cpu       # PyTorch's CPU-only wheels first, then gmbench
#
# Prints the venv's size, torch's build (CUDA version or none), and the time of a listing and
# of a `smoke` run of one method; exits non-zero if any step fails. Needs network access to
# the index the path uses (the cpu path: https://download.pytorch.org/whl/cpu).
set -euo pipefail
path="${1:-default}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# from a clone of the committed tree: what a user gets, and no build files left in the work tree
git clone -q "$repo" "$work/src"
python3 -m venv "$work/venv"
pip="$work/venv/bin/pip"
case "$path" in
  default) "$pip" install -q "$work/src" ;;
  cpu)
    # torch and torchvision from the same CPU index, so torchvision matches torch's build;
    # gmbench's install then finds torch satisfied and pulls no CUDA wheels
    "$pip" install -q torch torchvision --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
    "$pip" install -q "$work/src" ;;
  *) echo "usage: $0 default|cpu" >&2; exit 2 ;;
esac
py="$work/venv/bin/python"
echo "install path: $path"
echo "venv size: $(du -sh "$work/venv" | cut -f1)"
"$py" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda build:', torch.version.cuda or 'none', '| torchvision', torchvision.__version__)"
if [ "$path" = cpu ]; then
  "$py" -c "import torch, sys; sys.exit('a CUDA build was installed on the cpu path' if torch.version.cuda else 0)"
  if "$pip" list 2>/dev/null | grep -qi '^nvidia-'; then echo "nvidia wheels installed on the cpu path" >&2; exit 1; fi
fi
cd "$work"
export GMBENCH_CACHE_DIR="$work/cache" HF_DATASETS_OFFLINE=1
/usr/bin/time -f "gmbench plugins list (builds the catalog): %e s" "$work/venv/bin/gmbench" plugins list > /dev/null
/usr/bin/time -f "gmbench plugins list (from the catalog): %e s" "$work/venv/bin/gmbench" plugins list > /dev/null
/usr/bin/time -f "smoke run (vae on 8gaussians): %e s" "$work/venv/bin/gmbench" run --plugins vae --datasets 8gaussians \
  --budget smoke --quiet --out "$work/results" > /dev/null
echo "ok"
