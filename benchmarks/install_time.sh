#!/usr/bin/env bash
# The install from a fresh clone, as `make test` does it (uv, with a cache of its own that starts empty),
# against pip installing the same extras into another new venv, one after the other in one run: wall and
# CPU seconds of each, and whether both ended with the same packages.
#
#     bash benchmarks/install_time.sh [OUT.json]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/sf-install-XXXX)
trap 'rm -rf "$work"' EXIT
out=${1:-}

timed() {  # NAME CMD...: runs CMD, appends "NAME wall user sys" to $work/times
  local name=$1; shift
  /usr/bin/time -f "$name %e %U %S" -a -o "$work/times" "$@"
}

git clone -q "$repo" "$work/uv"
git clone -q "$repo" "$work/pip"
# the Makefile's own recipe, from nothing: a new venv and an empty uv cache
(cd "$work/uv" && UV_CACHE_DIR="$work/uv-cache" timed make make .venv/.interop >/dev/null)
# the reference: pip alone, as the Makefile did before uv
(cd "$work/pip" && python3 -m venv .venv &&
 timed pip .venv/bin/python -m pip install --quiet -e '.[test,interop]' 2>&1 | grep -v "^WARNING: Location" || true)
"$work/pip/.venv/bin/python" -c "import torch, ray, prefect, sae_lens"  # the reference did install

freeze() { "$work/uv/.venv/bin/uv" pip freeze --python "$1/.venv/bin/python" --exclude-editable 2>/dev/null |
           grep -v -E '^(pip|setuptools|uv)==' | tr 'A-Z_.' 'a-z--' | sort; }
same=$([ "$(freeze "$work/uv")" = "$(freeze "$work/pip")" ] && echo true || echo false)
packages=$(freeze "$work/uv" | wc -l)

python3 - "$work/times" "$same" "$packages" "$out" <<'EOF'
import json, sys
times, same, packages, out = sys.argv[1:]
rows = {name: {"wall_s": float(w), "cpu_s": round(float(u) + float(s), 1)}
        for name, w, u, s in (line.split() for line in open(times))}
result = {"make_interop": rows["make"], "pip_reference": rows["pip"], "packages": int(packages),
          "same_packages": same == "true", "wall_ratio_pip_over_make": round(rows["pip"]["wall_s"] / rows["make"]["wall_s"], 2)}
print(json.dumps(result, indent=2))
if out:
    open(out, "w").write(json.dumps(result, indent=2) + "\n")
EOF
