#!/usr/bin/env bash
# Generate the large bench project into DIR: MODULES modules of FILES C files each
# (plus one header per module), a main.c, and build.list naming the first BUILT
# modules, which the Dockerfile compiles. The rest are only context.
#   generate.sh DIR [MODULES=30] [FILES=100] [BUILT=5]
# The file the benchmark edits is modules/m00/m00_f000.c (its BENCH_REV line).
set -euo pipefail
dir=${1:?usage: generate.sh DIR [MODULES] [FILES] [BUILT]}
modules=${2:-30} files=${3:-100} built=${4:-5}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$dir/include" "$dir/modules"
cp "$here/Dockerfile" "$dir/Dockerfile"
: > "$dir/build.list"
for ((m = 0; m < modules; m++)); do
	mod=$(printf 'm%02d' "$m")
	mkdir -p "$dir/modules/$mod"
	(( m < built )) && echo "$mod" >> "$dir/build.list"
	{
		printf '#ifndef %s_H\n#define %s_H\n' "${mod^^}" "${mod^^}"
		for ((f = 0; f < files; f++)); do printf 'int %s_f%03d(int x);\n' "$mod" "$f"; done
		printf '#endif\n'
	} > "$dir/include/$mod.h"
	for ((f = 0; f < files; f++)); do
		fn=$(printf '%s_f%03d' "$mod" "$f")
		{
			printf '#include "%s.h"\n#define BENCH_REV 0\n' "$mod"
			printf 'static const int tbl[8] = {%d, %d, %d, %d, %d, %d, %d, %d};\n' \
				$((m + f)) $((m * 3 + 1)) $((f * 7 % 13)) $((m ^ f)) 5 $((f % 11)) $((m % 7)) $((m + 2 * f))
			printf 'int %s(int x) {\n\tint s = BENCH_REV;\n' "$fn"
			printf '\tfor (int i = 0; i < x; i++)\n\t\ts += tbl[i %% 8] * (i + %d);\n' "$f"
			printf '\treturn s %% 100003;\n}\n'
		} > "$dir/modules/$mod/$fn.c"
	done
done
{
	printf '#include <stdio.h>\n#include <string.h>\n'
	while read -r mod; do printf '#include "%s.h"\n' "$mod"; done < "$dir/build.list"
	printf 'int main(int argc, char **argv) {\n\tunsigned long sum = 0;\n'
	while read -r mod; do
		for ((f = 0; f < files; f++)); do printf '\tsum = sum * 31 + %s_f%03d(%d);\n' "$mod" "$f" $((f % 17 + 3)); done
	done < "$dir/build.list"
	cat <<'C'
	char line[64];
	snprintf(line, sizeof line, "BENCH_RESULT=%lu", sum);
	if (argc == 3 && strcmp(argv[1], "--check") == 0) {
		char want[64] = "";
		FILE *f = fopen(argv[2], "r");
		if (!f || !fgets(want, sizeof want, f)) return 2;
		want[strcspn(want, "\n")] = 0;
		if (strcmp(want, line) != 0) { fprintf(stderr, "mismatch: %s vs %s\n", want, line); return 1; }
	}
	puts(line);
	return 0;
}
C
} > "$dir/main.c"
