#!/usr/bin/env bash
# The prepared benchmark run for the lent GPU machine (issue 12; BENCHMARKS.md, "Issue 12: the GPU script").
# That machine has torch (CUDA), transformers, numpy, pyarrow and safetensors but reaches no network and lacks
# pydantic and zarr, and Ray and Prefect are too big to travel: so the benchmarks call the stage functions
# and sae/ directly, with the few missing packages installed from the wheels benchmarks/gpu_wheels.sh puts in
# .whl/ (carried). One device call: command `bash benchmarks/gpu.sh`, carry [".whl"], timeout_s 540.
# Each part has its own timeout so the whole fits 8 minutes, and a failing part does not stop the others;
# the exit status is non-zero if any part failed. JSON files and gpu.log land flat in $OUT (at most 8 files
# come back); copy the *-cuda.json files to benchmarks/results/ for `scopeflow plan --device cuda`.
# Without a GPU it stops at once with one line: nothing here is worth running on a CPU. GPU_SH_PARTS="train
# summary" runs only the parts named (a rerun of failed ones); GPU_SH_NO_INSTALL=1 skips the wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
say() { echo "gpu.sh: $*" | tee -a "$LOG"; }

CHECK=$(timeout 60 "$PY" -c "import torch; print('ok' if torch.cuda.is_available() else 'none')" 2>>"$LOG")
if [ "$CHECK" != ok ]; then
  if [ "$CHECK" = none ]; then
    say "no CUDA device (torch.cuda.is_available() is False): run this on the lent GPU machine"
  else
    say "$PY cannot import torch (or timed out; see $LOG): run this on the lent GPU machine"
  fi
  exit 2
fi

if [ -z "${GPU_SH_NO_INSTALL:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$LOG" || { say "installing the carried wheels failed"; exit 3; }
  # pydantic needs typing_extensions >= 4.16; carried separately so a newer one there is not shadowed
  if ! "$PY" -c "import importlib.metadata as m, sys; v = m.version('typing_extensions').split('.');
sys.exit(0 if (int(v[0]), int(v[1])) >= (4, 16) else 1)" 2>>"$LOG" && compgen -G ".whl/optional/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/optional/*.whl 2>&1 | tee -a "$LOG"
  fi
  export PYTHONPATH=/tmp/site:.
else
  say "no .whl/*.whl (or GPU_SH_NO_INSTALL): using the packages already installed"
  export PYTHONPATH=.
fi
if [ -d .whl/scopeflow-cache ]; then  # the embedded tokenizer, prebuilt: building it here would take minutes
  rm -rf /tmp/scopeflow-cache && cp -r .whl/scopeflow-cache /tmp/scopeflow-cache
  export SCOPEFLOW_CACHE=/tmp/scopeflow-cache
fi

nvidia-smi 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, transformers, zarr, pydantic, numpy; print('torch', torch.__version__, 'cuda',
torch.version.cuda, '| transformers', transformers.__version__, '| zarr', zarr.__version__, '| pydantic',
pydantic.__version__, '| numpy', numpy.__version__, '| cores', __import__('os').cpu_count())" 2>&1 | tee -a "$LOG"

SHM=/dev/shm  # the writers' ceiling into memory, when there is room for a unit (~2 GB) several times over
[ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')" -gt 16000000 ] 2>/dev/null || SHM=/tmp
FAILED=()
part() {  # part NAME SECONDS COMMAND...: one benchmark under its own timeout, logged
  local name=$1 limit=$2; shift 2
  [[ -z "${GPU_SH_PARTS:-}" || " $GPU_SH_PARTS " == *" $name "* ]] || return 0  # e.g. "extract summary"
  say "== $name (timeout ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || FAILED+=("$name($rc)")
}

part peak 25 "$PY" benchmarks/gpu_report.py peak --out "$OUT/matmul-peak-cuda.json"
part train 155 "$PY" benchmarks/train.py --device cuda --threads 8 --tmp-dir /tmp --out "$OUT/train-cuda.json"
part extract 115 "$PY" benchmarks/extract.py --device cuda --random-model google/gemma-2-2b --dtypes bfloat16 \
  --ctx 1024 --sizes 64 --batch 16 --repeats 3 --threads 8 --layers 0,5,10,15,20,25 --sites res \
  --shard-chunks 8 --out "$OUT/extract-cuda.json"
part writers 70 "$PY" benchmarks/extract_writer.py --writers 1,2,4,8,16 --root "$SHM" --rows 65536 --repeats 2 \
  --out "$OUT/extract-writers-cuda.json"
part evaluate 75 "$PY" benchmarks/evaluate.py --device cuda --no-baseline --skip-tiny --threads 8 \
  --random-model google/gemma-2-2b --layers 0,12,25 --widths 16384 --ctx 1024 --deep-seqs 16 --batch 8 \
  --rounds 2 --out "$OUT/evaluate-cuda.json"
part summary 15 "$PY" benchmarks/gpu_report.py summary --dir "$OUT" --out "$OUT/gpu-summary.json"

if [ ${#FAILED[@]} -gt 0 ]; then
  say "failed: ${FAILED[*]}"
  exit 1
fi
say "all parts done; files in $OUT"
