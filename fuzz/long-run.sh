#!/bin/sh
# A long fuzzing run of one target, the fastest way measured on a 2-core
# machine (see README.md): no AddressSanitizer (the core has no `unsafe`;
# safe Rust's bounds and overflow checks stay, as do debug assertions),
# built in a target directory of its own so that switching between this
# and an ASan build does not rebuild everything each time.
#
#   fuzz/long-run.sh TARGET [RUNS] [-- libFuzzer flags...]
#
# RUNS defaults to 10 million executions. Extra libFuzzer flags follow
# `--`, e.g. `-- -jobs=2 -workers=2` for two processes (each does RUNS)
# or `-- -max_total_time=7200` for a time bound as well.
# `NO_TRACE_COMPARES=1` builds without compare tracing (see README.md).
set -eu
cd "$(dirname "$0")"
target=${1:?usage: long-run.sh TARGET [RUNS] [-- libFuzzer flags...]}
shift
runs=10000000
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    runs=$1
    shift
fi
[ "${1:-}" = "--" ] && shift
dict=
[ "$target" = config ] && dict=-dict=config.dict
extra=
[ -n "${NO_TRACE_COMPARES:-}" ] && extra=--no-trace-compares
dir=target/none${extra:+-ntc}
# New inputs go to a corpus of the run's own (under target/, ignored),
# seeded from the committed one, which stays as it is (see README.md for
# keeping what a run found).
found=target/corpus/$target
mkdir -p "$found"
RUSTC_BOOTSTRAP=1 exec cargo fuzz run -s none $extra --target-dir "$dir" "$target" \
    "$found" "corpus/$target" -- -runs="$runs" $dict "$@"
