#!/usr/bin/env bash
# One-call GPU check: run vLLM 0.32 + this plugin on the lent GPU machine, which
# has torch 2.11 / triton 3.6 / transformers 5.17 but no vLLM and no network, and
# takes at most 64 MiB per call (tracked files included). Issue 26, item 4;
# background in shared/DESIGN.md s.3 ("vLLM itself on the GPU machine").
#
#   bash scripts/gpu_check.sh --bundle DIR     # here, on CPU: build DIR (~22 MiB)
#   bash scripts/gpu_check.sh --run DIR [ARGS] # on the GPU machine, repo root, as root
#   bash scripts/gpu_check.sh --install DIR PREFIX   # only unpack (what --run does first)
#
# The bundle (all xz tars: random weights and .py files pack about 1.5x better than
# with gzip, and the budget is what limits this):
#   vllm.tar.xz     vLLM 0.32's Python tree from .venv (.py, .json, .jinja), without
#                   the compiled _C*.so and vllm_flash_attn, which cannot travel
#   deps.tar.xz     what vLLM's offline LLM path imports and the GPU image lacks
#                   (scripts/gpu_check/wheels.txt; cp312 wheels at the versions of
#                   requirements/cpu-lock.txt, installed here with pip --target for
#                   Python 3.12 and repacked, minus data no offline path reads:
#                   mistral_common's tokenizer files, pycountry's translations);
#                   vllm/_C_stable_libtorch.py = scripts/gpu_check/c_shim.py, the
#                   few _C ops the offline CUDA path still reaches, in Python
#                   (platforms/cuda.py imports that module at its top);
#                   a metadata-only `vllm` 0.32.0 distribution (scripts/vllm_alias_gpu:
#                   no "+cpu", which would make vLLM pick its CPU platform); the
#                   plugin's dist-info with its vllm.general_plugins entry point
#                   (the plugin's code is the repo, on PYTHONPATH)
#   fixture.tar.xz  the tiny LLaVA fixture (plphp_dev.fixtures, llava/tiny) in bf16
# --run unpacks these into $GPU_CHECK_PREFIX (default /tmp/gpu_check_prefix), puts
# it and the repo on PYTHONPATH and runs scripts/gpu_check/run.py (its docstring
# says what it checks), all output to $OUT/gpu_check.log when $OUT is set.
#
# Checked on CPU (2026-12-06; scripts/gpu_check/cpu_check.sh --offline redoes it):
# - --bundle builds (about 2 min) and gives 22 MiB: vllm 5, deps 12, fixture 6.
# - A Python 3.11 build of the same bundle (same pins; only compiled wheels' tags
#   differ), unpacked by --install into a fresh venv that sees only a stand-in of
#   the GPU image's packages (image_sim.py: ours for the image's list, with its
#   transformers 5.17.0 and huggingface_hub 1.33.0), imports vllm, vllm.platforms.cuda
#   (and so c_shim.py's op registrations), TRITON_ATTN, the V1 and V2 GPU model
#   runners and worker, the LLaVA model, the engine, compilation, and the plugin
#   and its worker extension; platform detection there reads vllm 0.32.0 and the
#   plugin's entry point is found; --run there (python3 = that venv, run.py with
#   --allow-no-cuda) unpacks, passes its import check, loads and runs the HF
#   reference and fails at the first engine (no CUDA), writing $OUT's files.
# - With vLLM's CPU .so files and a 0.32.0+cpu alias added to a copy of that
#   install (CPU only: neither travels), run.py runs end to end on the CPU platform
#   with CPU_ATTN in place of TRITON_ATTN, eager and compiled: HF reference, stock
#   and PLPHP engines, token and kept-count checks (equal), timing rows; a PLPHP
#   engine that fails to start (backend FLASHINFER) is reported and the stock
#   engine still checked.
# - The cp312 bundle's compiled modules (pydantic_core, msgspec, zmq, llguidance,
#   openai_harmony, tvm_ffi, ...) import under Python 3.12.1.
# Not checked (needs the GPU): vLLM 0.32 on torch 2.11 / triton 3.6; the CUDA
# platform, TRITON_ATTN's kernels, Model Runner V2 with async scheduling and CUDA
# graphs, torch.compile there; c_shim.py's ops on CUDA (UVA views of pinned host
# memory for V2's buffers, weak refs in piecewise graph capture); whether another
# torch.ops._C call or lazy import waits on the CUDA path (read in the 0.32 source,
# not run); the image's own versions of the packages it shares with ours
# (pillow, protobuf, numpy ...); the wall time, which is estimated (about 6 min).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
HERE=scripts/gpu_check
BUDGET_MIB=60  # what may travel besides the repo's ~12 MB of tracked files
AIM_MIB=45

die() { echo "gpu_check: ERROR: $*" >&2; exit 1; }
mib() { echo "$(( ($(stat -c %s "$1") + 524287) / 1048576 ))"; }

platforms() {  # pip matches each manylinux tag exactly: those our pins' wheels carry, all
  # within the image's glibc (its Python 3.12.3 looks like Ubuntu 24.04's: glibc 2.39)
  local n
  for n in 5 12 17 24 26 27 28 31 34 35; do printf -- ' --platform manylinux_2_%s_x86_64' "$n"; done
  printf -- ' --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64'
}

pinned() {  # NAME -> NAME==VERSION from the CPU lock (names compared case/_/- blind)
  local want; want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  while IFS= read -r line; do
    [[ $line == \#* || -z $line ]] && continue
    [ "$(echo "${line%%==*}" | tr 'A-Z_.' 'a-z--')" = "$want" ] && { echo "$line"; return 0; }
  done < requirements/cpu-lock.txt
  die "$1 is not pinned in requirements/cpu-lock.txt"
}

bundle() {
  local dir=$1 py=.venv/bin/python pyver=${GPU_CHECK_PYVER:-3.12}
  [ -x "$py" ] || die ".venv missing: run scripts/setup.sh first"
  local site; site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  local cache=${GPU_CHECK_CACHE:-$HOME/.cache/vllm-plphp/gpu_check}/wheels-cp${pyver/./}
  STAGE=$(mktemp -d /tmp/gpu_check_stage.XXXXXX)
  trap 'rm -rf "$STAGE"' EXIT
  local stage=$STAGE
  rm -rf "$dir"; mkdir -p "$dir" "$cache"
  local t=$SECONDS

  echo "[bundle] (a) vLLM tree from $site/vllm"
  (cd "$site" && find vllm -path vllm/vllm_flash_attn -prune -o -name __pycache__ -prune -o \
     -type f \( -name '*.py' -o -name '*.json' -o -name '*.jinja' -o -name py.typed \) -print \
     | LC_ALL=C sort) > "$stage/vllm.list"
  tar -cf - -C "$site" -T "$stage/vllm.list" | xz -9 -T2 > "$dir/vllm.tar.xz"

  echo "[bundle] (b) wheels for Python $pyver into $cache"
  local specs=() name
  for name in $(grep -v '^#' $HERE/wheels.txt); do specs+=("$(pinned "$name")"); done
  # shellcheck disable=SC2046
  "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$pyver" --implementation cp $(platforms) -d "$cache" "${specs[@]}" \
    2>&1 | grep -v "is ignored" || true
  # shellcheck disable=SC2046
  "$py" -m pip install -q --disable-pip-version-check --no-index --find-links "$cache" \
    --no-deps --no-compile --only-binary=:all: --python-version "$pyver" --implementation cp \
    $(platforms) --target "$stage/deps" "${specs[@]}" 2>&1 | grep -v "root' user" || true
  "$py" - "$stage/deps" "${specs[@]}" <<'EOF' || die "a pinned wheel did not install (pip -q hides why; see $cache)"
import sys
from importlib.metadata import distributions
norm = lambda n: n.lower().replace("-", "_").replace(".", "_")
have = {(norm(d.metadata["Name"]), d.version) for d in distributions(path=[sys.argv[1]])}
missing = [s for s in sys.argv[2:] if (norm(s.split("==")[0]), s.split("==")[1]) not in have]
sys.exit(f"not installed: {missing}" if missing else 0)
EOF
  echo "[bundle] (c, d, e) stand-in _C_stable_libtorch, vllm 0.32.0 alias, plugin entry point"
  mkdir -p "$stage/deps/vllm"
  cp $HERE/c_shim.py "$stage/deps/vllm/_C_stable_libtorch.py"
  "$py" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$stage/alias" ./scripts/vllm_alias_gpu
  "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --target "$stage/deps" "$stage"/alias/vllm-0.32.0-*.whl 2>&1 | grep -v "root' user" || true
  [ -f "$stage/deps/vllm-0.32.0.dist-info/METADATA" ] || die "vllm 0.32.0 alias not built"
  "$py" - "$stage/deps" <<'EOF'
import sys
from importlib.metadata import distribution
from pathlib import Path
d = distribution("vllm-plphp")  # the editable install of this repo in .venv
info = Path(sys.argv[1], f"vllm_plphp-{d.version}.dist-info")
info.mkdir()
info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm-plphp\nVersion: {d.version}\n")
info.joinpath("entry_points.txt").write_text(d.read_text("entry_points.txt"))
EOF
  # data no offline LLaVA run reads (Mistral tokenizers, country-name translations),
  # scripts whose shebangs point here, and the bundled C sources of tvm-ffi
  (cd "$stage/deps" && rm -rf bin pycountry/locales tvm_ffi/3rdparty \
     mistral_common/data/tekken_*.json mistral_common/data/*.model.* &&
     find . -name __pycache__ -prune -exec rm -rf {} +)
  tar -cf - -C "$stage/deps" . | xz -9 -T2 > "$dir/deps.tar.xz"

  echo "[bundle] (f) fixture llava/tiny in bf16"
  local fixture
  fixture=$(nice -n 10 "$py" -m plphp_dev.fixtures build llava --variant tiny --no-progress | tail -1)
  "$py" $HERE/fixture_bf16.py "$fixture" "$stage/fixture/llava-tiny-bf16"
  chmod -R a+rX "$stage/fixture"
  tar -cf - -C "$stage/fixture" llava-tiny-bf16 | xz -9 -T2 > "$dir/fixture.tar.xz"

  {
    echo "built $(date -u +%FT%TZ) for Python $pyver from $(git rev-parse --short HEAD)"
    for f in vllm deps fixture; do echo "$f.tar.xz $(stat -c %s "$dir/$f.tar.xz") bytes"; done
    printf '%s\n' "${specs[@]}"
  } > "$dir/MANIFEST.txt"
  local total=0 f
  for f in "$dir"/*; do total=$((total + $(stat -c %s "$f"))); done
  echo "[bundle] $dir in $((SECONDS - t)) s:"
  for f in vllm deps fixture; do echo "  $f.tar.xz $(mib "$dir/$f.tar.xz") MiB"; done
  echo "  total $(( (total + 524287) / 1048576 )) MiB ($total bytes); budget $BUDGET_MIB MiB, aim $AIM_MIB"
  [ "$total" -le $((BUDGET_MIB * 1048576)) ] || die "bundle over budget ($BUDGET_MIB MiB)"
  [ "$total" -le $((AIM_MIB * 1048576)) ] || echo "[bundle] WARNING: over the $AIM_MIB MiB aim"
}

install_bundle() {  # DIR PREFIX: unpack the three tars (Python's lzma: no xz binary needed)
  local dir=$1 prefix=$2
  for f in vllm deps fixture; do [ -f "$dir/$f.tar.xz" ] || die "$dir/$f.tar.xz missing (build with --bundle)"; done
  rm -rf "$prefix"; mkdir -p "$prefix/fixture"
  python3 - "$dir" "$prefix" <<'EOF' || die "unpacking the bundle failed"
import sys, tarfile
src, dst = sys.argv[1:3]
for name, into in (("vllm", dst), ("deps", dst), ("fixture", dst + "/fixture")):
    with tarfile.open(f"{src}/{name}.tar.xz") as t:
        t.extractall(into, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(into)
EOF
}

run() {
  local dir=$1; shift
  [ -d "$dir" ] || die "no bundle at $dir (build it on CPU: bash scripts/gpu_check.sh --bundle $dir)"
  if [ -n "${OUT:-}" ]; then exec > >(tee -a "$OUT/gpu_check.log") 2>&1; fi
  local prefix=${GPU_CHECK_PREFIX:-/tmp/gpu_check_prefix} t=$SECONDS
  echo "[run] $(date -u +%FT%TZ) on $(hostname); $(python3 -V 2>&1) at $(command -v python3)"
  nvidia-smi -L 2>/dev/null || echo "[run] nvidia-smi: none"
  install_bundle "$dir" "$prefix"
  echo "[run] installed into $prefix in $((SECONDS - t)) s"
  export PYTHONPATH=$prefix:$REPO${PYTHONPATH:+:$PYTHONPATH}
  # no network there: never wait on the hub or usage stats
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  python3 -c "import vllm, vllm_plphp, pydantic, zmq" || die "import check failed (see above)"
  echo "[run] import check ok at $((SECONDS - t)) s"
  local rc=0
  timeout -k 10 "${GPU_CHECK_TIMEOUT:-540}" python3 $HERE/run.py \
    --model "$prefix/fixture/llava-tiny-bf16" "$@" || rc=$?
  [ $rc = 124 ] && echo "[run] ERROR: run.py passed the ${GPU_CHECK_TIMEOUT:-540} s limit"
  echo "[run] done in $((SECONDS - t)) s, exit $rc"
  return $rc
}

case "${1:-}" in
  --bundle) [ $# -eq 2 ] || die "usage: $0 --bundle DIR"; bundle "$2" ;;
  --run) [ $# -ge 2 ] || die "usage: $0 --run DIR [run.py options]"; shift; run "$@" ;;
  --install) [ $# -eq 3 ] || die "usage: $0 --install DIR PREFIX"; install_bundle "$2" "$3" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
