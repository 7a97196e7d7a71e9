#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for SECONDS (default 60, or $FUZZ_SECS),
# one after the other, starting from the committed seeds in fuzz/corpus/<target>/.
# Fails if any target crashes (panic, failed assertion, timeout, out of memory); the input that
# did it is left in fuzz/artifacts/<target>/ (see docs/fuzzing.md for turning it into a test).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Environment:
#   FUZZ_SECS        seconds per target when no SECONDS argument is given (default 60)
#   FUZZ_SANITIZER   none (default) or address. The project has no `unsafe` code, so AddressSanitizer
#                    finds little here, and costs a slower build and about half the executions.
#   FUZZ_TOOLCHAIN   a rustup toolchain to use (default: nightly when installed, else stable)
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
SECS=${1:-${FUZZ_SECS:-60}}
shift $(( $# > 0 ? 1 : 0 ))
SANITIZER=${FUZZ_SANITIZER:-none}

cd "$(dirname "$0")/.."
ROOT=$PWD

# cargo-fuzz itself, pinned.
if ! cargo fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
    echo "fuzz: installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
    cargo install cargo-fuzz --version "=${CARGO_FUZZ_VERSION}" --locked --quiet
fi

# The toolchain. With no sanitizer cargo-fuzz passes rustc only stable flags (-Cpasses=sancov-module
# and -Cllvm-args), so stable works; a sanitizer needs nightly, or stable made to accept -Z flags.
TOOLCHAIN=()
if [[ -n ${FUZZ_TOOLCHAIN:-} ]]; then
    TOOLCHAIN=("+${FUZZ_TOOLCHAIN}")
elif cargo +nightly --version >/dev/null 2>&1; then
    TOOLCHAIN=(+nightly)
fi
if [[ ${#TOOLCHAIN[@]} -eq 0 || ${TOOLCHAIN[0]} != +nightly* ]] && [[ $SANITIZER != none ]]; then
    export RUSTC_BOOTSTRAP=1
fi
echo "fuzz: $(cargo "${TOOLCHAIN[@]}" --version), sanitizer ${SANITIZER}, ${SECS}s per target"

# Release, with debug assertions and overflow checks on (cargo-fuzz's default).
FLAGS=(--sanitizer "$SANITIZER" --debug-assertions)

TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
    mapfile -t TARGETS < <(cargo "${TOOLCHAIN[@]}" fuzz list)
fi

start=$(date +%s)
cargo "${TOOLCHAIN[@]}" fuzz build "${FLAGS[@]}"
echo "fuzz: built ${#TARGETS[@]} targets in $(( $(date +%s) - start ))s"

# libFuzzer adds what it finds to the first corpus directory: a scratch one under fuzz/target,
# so the committed seeds stay as they are.
failed=()
summary=()
for target in "${TARGETS[@]}"; do
    work="fuzz/target/corpus/${target}"
    mkdir -p "$work" "fuzz/corpus/${target}" "fuzz/artifacts/${target}"
    log="fuzz/target/${target}.log"
    echo "fuzz: ${target} for ${SECS}s"
    if cargo "${TOOLCHAIN[@]}" fuzz run "${FLAGS[@]}" "$target" "$work" "fuzz/corpus/${target}" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$target")
        tail -n 60 "$log"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p' "$log" | tail -n1)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' "$log" | tail -n1)
    summary+=("$(printf '%-20s %-6s %10s execs %8s exec/s %6s cov' "$target" "$status" "${execs:-?}" "${rate:-?}" "${cov:-?}")")
done

echo "fuzz: summary ($(( $(date +%s) - start ))s in all)"
printf '  %s\n' "${summary[@]}"
echo "fuzz: $(( ${#TARGETS[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/; reproduce with" \
        "cargo ${TOOLCHAIN[*]} fuzz run ${FLAGS[*]} <target> fuzz/artifacts/<target>/<file>)" >&2
    exit 1
fi
