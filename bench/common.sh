# Shell helpers the benchmark scripts share; sourced, not run.
# die names the script that sourced this file.
log() { echo "== $*" >&2; }
die() { echo "$(basename "$0"): FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
min() { printf '%s\n' "$@" | sort -g | head -n 1; }
has_tool() { [[ " $TOOLS " == *" $1 "* ]]; }
