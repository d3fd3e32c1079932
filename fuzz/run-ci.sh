#!/usr/bin/env bash
# Runs every fuzz target in fuzz/fuzz_targets briefly, from its committed
# corpus. Works from any directory (it moves to the repository root).
#
#   FUZZ_SECONDS  seconds per target (default 20)
#   FUZZ_TARGETS  space-separated targets to run (default: all)
#
# New inputs the fuzzer finds go to a scratch directory, so the committed
# corpus is only read. A crash, leak, timeout or out-of-memory stops that
# target with a non-zero status; the input is saved under
# fuzz/artifacts/<target>/ and the script exits non-zero after running the
# remaining targets.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
seconds=${FUZZ_SECONDS:-20}

log() { printf 'fuzz: %s\n' "$*" >&2; }

# cargo-fuzz needs unstable rustc flags (-Zsanitizer=...). Prefer a nightly
# toolchain; without one, let the stable compiler accept them.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    cargo_fuzz=(cargo +nightly fuzz)
else
    log "no nightly toolchain; using the default toolchain with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    cargo_fuzz=(cargo fuzz)
fi

if ! "${cargo_fuzz[@]}" --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi
log "$("${cargo_fuzz[@]}" --version)"

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    targets=()
    for file in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    log "no fuzz targets found in fuzz/fuzz_targets"
    exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus" "$scratch/$target"
    log "running $target for ${seconds}s"
    # The first corpus directory receives new inputs; the second is read.
    if "${cargo_fuzz[@]}" run "$target" "$scratch/$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1; then
        log "$target: ok ($(find "$scratch/$target" -type f | wc -l) new inputs, not kept)"
    else
        log "$target: FAILED; crashing input in $root/fuzz/artifacts/$target/"
        log "replay: cargo +nightly fuzz run $target fuzz/artifacts/$target/<file>"
        failed+=("$target")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    log "failed targets: ${failed[*]}"
    exit 1
fi
log "all ${#targets[@]} targets ran clean"
