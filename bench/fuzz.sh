#!/usr/bin/env bash
# Fuzz berth's parsers and servers for a bounded time each (cargo-fuzz, libFuzzer).
#
#   bench/fuzz.sh                 # every target, 60 s each
#   SECONDS_EACH=600 bench/fuzz.sh dockerfile registry_routes
#
# Targets (fuzz/fuzz_targets/): dockerfile, expand, manifest, image_config,
# registry_routes, layer_unpack. Seeds come from fuzz/seeds/<target>/ (and the golden
# Dockerfiles for `dockerfile`); the growing corpus lives in target/fuzz-corpus/<target>/,
# outside git. A crash stops its target and leaves the input in
# fuzz/artifacts/<target>/: fix the bug, then keep the input in
# fuzz/regressions/<target>/, where the crates' regression tests replay it.
#
# Installs cargo-fuzz from crates.io if missing. cargo-fuzz wants nightly-only rustc
# flags; RUSTC_BOOTSTRAP=1 lets this machine's stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
each=${SECONDS_EACH:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dockerfile expand manifest image_config registry_routes layer_unpack)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
root=$PWD
failed=()
for t in "${targets[@]}"; do
    corpus="$root/target/fuzz-corpus/$t"
    mkdir -p "$corpus"
    [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    [ -d "fuzz/regressions/$t" ] && cp -n fuzz/regressions/"$t"/* "$corpus"/ 2>/dev/null || true
    if [ "$t" = dockerfile ]; then
        for f in crates/berth-build/tests/testfiles*/*/Dockerfile; do
            cp -n "$f" "$corpus/$(basename "$(dirname "$f")")"
        done
    fi
    echo "== $t: ${each}s"
    # -rss_limit_mb: a parser that balloons memory on small input is a bug too.
    if ! (cd fuzz && cargo fuzz run --sanitizer none "$t" "$corpus" -- \
            -max_total_time="$each" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 |
            grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|Test unit written|.*panicked)' ); then
        :
    fi
    if ls fuzz/artifacts/"$t"/ 2>/dev/null | grep -q .; then
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: inputs that failed are in fuzz/artifacts/ for: ${failed[*]}"
    exit 1
fi
echo "fuzz: no failures in ${targets[*]} (${each}s each)"
