#!/usr/bin/env bash
# Runs the cargo-fuzz targets of hypercall-abi/fuzz (guest-controlled data:
# shared rings, ...).
#
#   scripts/fuzz.sh smoke [TARGET...]   bounded run per target (make test-fuzz)
#   scripts/fuzz.sh long  [TARGET...]   long run per target (make fuzz)
#
# Environment: FUZZ_RUNS (smoke, default 200000), FUZZ_SECONDS (smoke
# default 60, long default 1800), FUZZ_JOBS (long, parallel jobs, default 1).
#
# libFuzzer needs rustc's -Zsanitizer, which stable rustc accepts with
# RUSTC_BOOTSTRAP=1; no nightly toolchain is required. Exits non-zero if a
# target fails to build or finds a crash; the crashing input is left in
# hypercall-abi/fuzz/artifacts/TARGET/ (replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT` from hypercall-abi/).
set -euo pipefail

mode=${1:-smoke}
shift || true

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir=$root/hypercall-abi/fuzz
export RUSTC_BOOTSTRAP=1

case $mode in
smoke)
    limits=(-runs="${FUZZ_RUNS:-200000}" -max_total_time="${FUZZ_SECONDS:-60}")
    ;;
long)
    limits=(-max_total_time="${FUZZ_SECONDS:-1800}")
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
        limits+=(-fork="$FUZZ_JOBS")
    fi
    ;;
*)
    echo "usage: $0 smoke|long [TARGET...]" >&2
    exit 2
    ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$fuzz_dir"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
fi

status=0
for target in "${targets[@]}"; do
    echo "fuzz: $target ($mode: ${limits[*]})" >&2
    mkdir -p "corpus/$target"
    start=$SECONDS
    if cargo fuzz run --fuzz-dir "$fuzz_dir" "$target" "corpus/$target" -- \
        "${limits[@]}" -print_final_stats=1; then
        echo "fuzz: $target: no crash in $((SECONDS - start))s" >&2
    else
        echo "fuzz: $target: FAILED; see $fuzz_dir/artifacts/$target/" >&2
        status=1
    fi
done
exit $status
