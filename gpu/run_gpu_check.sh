#!/usr/bin/env bash
# One-shot GPU verification of dali_pose's GPU backend, for an offline CUDA 13 / Python 3.12
# machine with torch, numba and numba-cuda (no DALI). Run from the dali_pose repo root:
#
#     bash gpu/run_gpu_check.sh            # results land in $OUT (default: a temporary folder)
#
# Needs: gpu_probe.py next to this script; DALI either importable already or staged under
# .gpu-wheels/ as part-0, part-1, ... (stage_gpu_deps.sh: tar.xz of a ready site/ dir; or
# or a tar of w/*.whl, pip-installed here with --no-index), plus
# optional .gpu-wheels/*.whl extras (opencv-python-headless if the machine has no cv2).
# Finishes inside BUDGET seconds (default 540) and always writes
# $OUT/summary.txt; later steps are skipped when the budget runs short. Steps, most telling
# first: environment, DALI's CUDA-13 toolkit gate with/without the shim, one GPU numba
# operator in DALI vs the CPU kernel, `pytest -m gpu`, the dot test (numbers), per-image
# decoding on the GPU (dot test, float32 / uint8, GPU vs CPU crops), a GPU loader
# with a NODA pool (untested by tests/), a CUPTI profile of the GPU iterator (host round
# trips), `python -m dali_pose.tools.bench --backends dali-gpu,dali-gpu-oracle,reference
# --train-step --kernels`
# on a small synthetic set (300 people, generated while the tests run).
set -uo pipefail
T0=$(date +%s)
BUDGET=${BUDGET:-540}
OUT=${OUT:-${TMPDIR:-/tmp}/gpucheck-out}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(pwd)
PY=${PY:-python3}
W=$ROOT/.gpu-wheels
mkdir -p "$OUT/logs"
SUM=$OUT/summary.txt
: > "$SUM"
export NUMBA_CACHE_DIR=${TMPDIR:-/tmp}/numba-cache PYTHONUNBUFFERED=1
say() { echo "$*" | tee -a "$SUM"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# step NAME MAX_SECONDS CMD...: run with a timeout of min(MAX, budget left - 15 s), log to
# $OUT/logs/NAME.log, record rc and seconds; the "KEY: value" lines of probes go to the summary
step() {
  local name=$1 max=$2; shift 2
  local l; l=$(left); local t=$(( l - 15 < max ? l - 15 : max ))
  if [ "$t" -lt 20 ]; then say "[$name] SKIPPED (budget: ${l}s left)"; return 99; fi
  local s; s=$(date +%s)
  timeout -k 5 "$t" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  say "[$name] rc=$rc in $(( $(date +%s) - s ))s (limit ${t}s)$([ $rc = 124 ] && echo ' TIMED OUT')"
  grep -E '^[A-Za-z][^:]{1,90}: ' "$OUT/logs/$name.log" | grep -v -E '^(WARNING|Warning|  File)' \
    | head -40 | sed 's/^/    /' >> "$SUM"
  [ $rc != 0 ] && tail -3 "$OUT/logs/$name.log" | cut -c1-300 | sed 's/^/    | /' >> "$SUM"
  return $rc
}

say "== dali_pose GPU check $(date -u +%FT%TZ) on $(hostname), repo $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/    nvidia-smi: /' >> "$SUM"
nproc | sed 's/^/    cores: /' >> "$SUM"

# ---- 1. DALI: importable already, or unpack / install the staged pieces
if ! $PY -c "import nvidia.dali" 2>/dev/null; then
  if [ ! -f "$W/site/STAGED" ] && ls "$W"/part-* >/dev/null 2>&1; then
    ( cd "$W" && if [ -f SHA256SUMS ]; then sha256sum -c --quiet SHA256SUMS; fi ) \
      > "$OUT/logs/unpack.log" 2>&1 || say "[unpack] WARNING: checksum mismatch (see logs/unpack.log)"
    magic=$(cat "$W"/part-0 | head -c 6 | od -An -tx1 | tr -d ' \n')
    if [ "$magic" = "fd377a585a00" ]; then  # stage_gpu_deps.sh: site/ as tar.xz
      if command -v xz >/dev/null; then unxz=(xz -dc -T0); else
        unxz=($PY -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer, 1<<22)"); fi
      cat "$W"/part-* | "${unxz[@]}" | tar -x -C "$W" >> "$OUT/logs/unpack.log" 2>&1
    else  # a tar of w/*.whl
      cat "$W"/part-* | tar -x -C "$W" >> "$OUT/logs/unpack.log" 2>&1 &&
      $PY -m pip install -q --no-index --no-deps --no-compile --target "$W/site" "$W"/w/*.whl \
        >> "$OUT/logs/unpack.log" 2>&1 &&
      printf '%s\n' "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" \
        > "$W/site/nvidia/__init__.py" && echo "wheels" > "$W/site/STAGED"
    fi
    say "[unpack] $(cat "$W/site/STAGED" 2>/dev/null || echo FAILED) in $(( $(date +%s) - T0 ))s"
  fi
  export PYTHONPATH=$W/site${PYTHONPATH:+:$PYTHONPATH}
fi
# extra wheels carried as .gpu-wheels/*.whl (e.g. opencv-python-headless when the machine
# lacks cv2): unzipped into site/ (a wheel is a zip; these need no install scripts)
for whl in "$W"/*.whl; do
  [ -e "$whl" ] || continue
  mkdir -p "$W/site"
  $PY -m zipfile -e "$whl" "$W/site" >> "$OUT/logs/unpack.log" 2>&1 \
    && say "[unpack] extra wheel $(basename "$whl")" || say "[unpack] FAILED extra wheel $whl"
  case ":${PYTHONPATH:-}:" in *":$W/site:"*) ;; *) export PYTHONPATH=$W/site${PYTHONPATH:+:$PYTHONPATH};; esac
done
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if ! $PY -c "import nvidia.dali" > "$OUT/logs/dali_import.log" 2>&1; then
  say "DALI NOT IMPORTABLE: $(tail -3 "$OUT/logs/dali_import.log" | tr '\n' ' ')"
fi

# ---- 2. probes
step env 40 $PY "$HERE/gpu_probe.py" env
step gate 40 $PY "$HERE/gpu_probe.py" gate
step numba_op 120 $PY "$HERE/gpu_probe.py" numba

# synthetic data for the benchmark, generated while the tests run (small: ~300 people)
if [ ! -f data/synthetic/annotations/person_keypoints_train.json ]; then
  ( timeout 200 $PY -m dali_pose.tools.synthetic --out data/synthetic --num-train 120 --num-val 8 \
      > "$OUT/logs/synthetic.log" 2>&1 ) &
  SYN=$!
fi

# ---- 3. the GPU tests (test_gpu.py first: the loader end to end)
step pytest_gpu 260 $PY -m pytest -q -m gpu -p no:cacheprovider -rfEs \
  --junitxml="$OUT/pytest_gpu.xml" tests/test_gpu.py tests/test_targets.py \
  tests/test_occlusion.py tests/test_noda.py tests/test_codecs.py tests/test_bench.py \
  tests/test_trainer.py tests/test_per_image.py tests/test_warp.py
tail -40 "$OUT/logs/pytest_gpu.log" | grep -E "passed|failed|error|FAILED|ERROR|SKIPPED" \
  | awk '!seen[$0]++' | sed 's/^/    /' >> "$SUM"

# ---- 4. numbers: dot test, iterator profile
step dot 100 $PY "$HERE/gpu_probe.py" dot
step perimage 100 $PY "$HERE/gpu_probe.py" perimage
step noda 120 $PY "$HERE/gpu_probe.py" noda
step profile 60 $PY "$HERE/gpu_probe.py" profile

# ---- 5. benchmark (dali-gpu vs reference, train step, kernels)
[ -n "${SYN:-}" ] && wait "$SYN"
tail -3 "$OUT/logs/synthetic.log" 2>/dev/null | sed 's/^/    synthetic: /' >> "$SUM"
step bench 240 $PY -m dali_pose.tools.bench --config configs/synthetic.yaml \
  --backends dali-gpu,dali-gpu-oracle,reference --train-step --kernels --rounds 3 --batches 20 --warmup 4 \
  --stage-batches 8 --train-iters 20 --set loader.num_threads=8 --json "$OUT/bench.json"
grep -c "It is recommended that the grid volume" "$OUT/logs/bench.log" 2>/dev/null \
  | sed 's/^/    DALI grid-volume warnings in bench stderr: /' >> "$SUM"

# ---- 6. compact summary of the json / xml
$PY - "$OUT" >> "$SUM" 2>&1 <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
out = sys.argv[1]
p = os.path.join(out, "pytest_gpu.xml")
if os.path.exists(p):
    suites = ET.parse(p).getroot()
    for ts in suites.iter("testsuite"):
        print(f"pytest -m gpu: {ts.get('tests')} tests, {ts.get('failures')} failures, "
              f"{ts.get('errors')} errors, {ts.get('skipped')} skipped, {ts.get('time')} s")
    for tc in suites.iter("testcase"):
        for bad in list(tc.findall("failure")) + list(tc.findall("error")):
            msg = (bad.get("message") or "").replace("\n", " ")[:300]
            print(f"  FAIL {tc.get('classname')}::{tc.get('name')}: {msg}")
p = os.path.join(out, "bench.json")
if os.path.exists(p):
    r = json.load(open(p))
    m = r["meta"]
    print(f"bench: {m.get('gpu')}, DALI {m.get('dali')}, torch {m.get('torch')}, "
          f"batch {m['batch_size']}, threads {m['threads']}, rows {m['rows']}")
    for name, b in r["backends"].items():
        if b.get("status") != "ok":
            print(f"  {name}: {b.get('status')}: {b.get('reason')}")
            continue
        mem = b.get("memory", {})
        print(f"  {name}: {b['median_samples_per_s']:.0f} samples/s "
              f"({b['min_samples_per_s']:.0f}-{b['max_samples_per_s']:.0f}), "
              f"x{(b.get('ratio_to_reference') or 0):.2f} vs reference, "
              f"{b['cpu_cores']:.2f} cores, {b['cpu_ms_per_sample']:.2f} CPU ms/sample, "
              f"build {b['build_s']:.1f} s, GPU MB {mem.get('gpu_mem_mb')}")
        st = b.get("stages", {}).get("stages")
        if st:
            print("    stages wall ms/sample: " + ", ".join(
                f"{k} {v['wall_ms_per_sample']:.3f}" for k, v in st.items()))
        if b.get("stages_error"):
            print(f"    stages error: {b['stages_error']}")
    t = r.get("train_step")
    if t:
        print(f"  train step: {t.get('status')} {t.get('median_samples_per_s', 0):.0f} "
              f"samples/s (HRNet-W32 AMP); loader/training "
              f"{ {k: round(v, 2) for k, v in t.get('loader_over_training', {}).items()} }")
    k = r.get("kernels")
    if k:
        for name in ("targets", "occlusion"):
            v = k[name]
            print(f"  kernel {name}: numba CPU {v['numba_cpu_ms']:.2f} ms, classic "
                  f"{v.get('numpy_ms', 0):.2f} ms, CUDA {v.get('cuda_ms')} ms per batch of "
                  f"{k['batch']}" + (f", |CUDA-CPU| {v['cuda_max_abs_diff']:.2e}"
                                     if 'cuda_max_abs_diff' in v else ""))
EOF
say "== done in $(( $(date +%s) - T0 ))s; logs in \$OUT/logs, pytest_gpu.xml, bench.json"
{ echo "== needs attention:"; grep -E "FAIL|RAISES|MISSING|MISMATCH|TIMED OUT|NOT IMPORTABLE|SKIPPED \(budget|rc=[1-9]|WARNING" "$SUM" \
    | grep -v -E "^== needs" | awk '!seen[$0]++' | head -40; } >> "$SUM.tmp"
cat "$SUM.tmp" >> "$SUM"; rm -f "$SUM.tmp"
