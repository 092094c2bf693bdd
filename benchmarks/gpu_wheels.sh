#!/usr/bin/env bash
# Run HERE (a machine with PyPI), from the repo root, before `bash benchmarks/gpu.sh` goes to the lent GPU
# machine: that machine reaches no network and lacks the few packages our stage functions and sae/ import
# (pydantic, zarr and their own needs; KINDS.md lists what it has), so they travel as wheels in .whl/
# (ignored, named in the run's carry). Also copies the embedded tiny model and corpus (their tokenizer is the
# one the random Gemma models use) into .whl/scopeflow-cache, so the GPU machine does not spend minutes
# building them. Versions are the ones this project pins (pyproject.toml) or resolves to.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qxF "/.whl/" "$EXCLUDE" 2>/dev/null || echo "/.whl/" >> "$EXCLUDE"
mkdir -p .whl
WHEELS=(
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 crc32c==2.9.post0 donfig==0.8.1.post1
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
# typing_extensions is there, but pydantic 2.14 needs >= 4.16: gpu.sh installs this one only if it is older
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl/optional typing-extensions==4.16.0
"$PY" -m tasks.lm.embedded >/dev/null  # builds the embedded assets into the cache if missing
CACHE=${SCOPEFLOW_CACHE:-$HOME/.cache/scopeflow}
rm -rf .whl/scopeflow-cache && mkdir -p .whl/scopeflow-cache && cp -r "$CACHE"/embedded-v* .whl/scopeflow-cache/
rm -f .whl/scopeflow-cache/*.lock
ls -la .whl
du -sh .whl
echo "with the tracked tree: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes tracked"
