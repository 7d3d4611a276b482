#!/usr/bin/env bash
# Generate the regapp bench project into DIR: CFILES C files (plus main.c) in src/ and
# ASSETS small text files in assets/dNN/ (100 a folder).
#   generate.sh DIR [CFILES=120] [ASSETS=3000]
# The file the benchmark edits is assets/d00/asset-0000.txt.
set -euo pipefail
dir=${1:?usage: generate.sh DIR [CFILES] [ASSETS]}
cfiles=${2:-120} assets=${3:-3000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$dir/src" "$dir/assets"
cp "$here/Dockerfile" "$dir/Dockerfile"
for ((f = 0; f < cfiles; f++)); do
	printf 'int f%03d(int x) {\n\tint s = %d;\n\tfor (int i = 0; i < x; i++)\n\t\ts += (i * %d) %% 97;\n\treturn s;\n}\n' \
		"$f" "$f" $((f % 13 + 1)) > "$dir/src/f$(printf %03d "$f").c"
done
{
	printf '#include <stdio.h>\n'
	for ((f = 0; f < cfiles; f++)); do printf 'int f%03d(int x);\n' "$f"; done
	printf 'int main(void) {\n\tunsigned long sum = 0;\n'
	for ((f = 0; f < cfiles; f++)); do printf '\tsum = sum * 31 + f%03d(%d);\n' "$f" $((f % 17 + 3)); done
	printf '\tprintf("BENCH_RESULT=%%lx\\n", sum);\n\treturn 0;\n}\n'
} > "$dir/src/main.c"
for ((a = 0; a < assets; a++)); do
	d=$(printf 'd%02d' $((a / 100)))
	[[ -d $dir/assets/$d ]] || mkdir -p "$dir/assets/$d"
	printf 'asset %d\nsome text that stands for a small static file, %d\n' "$a" $((a * 7)) \
		> "$dir/assets/$d/asset-$(printf %04d "$a").txt"
done
