#!/usr/bin/env bash
# Benchmark `berth +target` (an Earthfile) against `berth build` (the same project as a
# Dockerfile) and `DOCKER_BUILDKIT=1 docker build` (Debian docker.io 20.10), on the
# bench projects of bench/build.sh (bench/common.sh):
#
#   small  busybox base, ~20 files, a few small RUN steps, a multi-stage copy
#   large  Debian bookworm minbase + gcc, ~3000 generated C files, a RUN compiling 500
#          of them (the shape is LARGE_MODULES, LARGE_FILES, LARGE_BUILT)
#
# Each project's Dockerfile is written as an Earthfile too (write_earthfile): the build
# stage is a target that saves /out as an artifact, the final stage a target that
# copies it and saves the image. Both berth paths use the base from berth's store,
# imported (untimed) into every new --root under the name dockerd has it.
#
#   cold    berth: a new --root holding only the imported base; docker: after
#           `docker builder prune -af`, the base loaded again (min of COLD_REPS; each
#           rep starts from new roots and a settle, and the kinds take turns at going
#           first, so none is always the first build after the pause)
#   no-op   the same build again, nothing changed                   (min of NOOP_REPS)
#
# and prints the times, Earthfile/Dockerfile (issue 9's target: <= 1.1x, cold and
# no-op) and Earthfile/docker. Then the multi-target case: an Earthfile of MULTI
# independent targets whose RUNs wait MULTI_SECONDS (1 2 3 4 s: waiting, not CPU, so
# the measure is the engine's parallelism, not this machine's cores) and an `+all`
# that BUILDs them, cold: `+all` vs its longest target alone (target <= 1.1x).
# The `berth +image` builds run with --no-output, so, as `berth build -t`, the image
# goes into berth's store only (not into dockerd).
#
# Usage: bench/earthfile.sh        (as root: runc, overlayfs, debootstrap for large)
#   BERTH_BIN=path       use this berth instead of `cargo build --release -p berth-cli`
#   PROJECTS="small large"   which projects to run
#   TOOLS="berth docker"     docker may be left out (berth must stay)
#   NOOP_REPS=2          no-op runs per tool (the minimum is reported)
#   COLD_REPS=1          cold runs per tool (the minimum is reported)
#   MULTI_SECONDS="1 2 3 4"  the multi-target case's targets ("" skips it)
#   LARGE_MODULES=30 LARGE_FILES=100 LARGE_BUILT=5   shape of the large context
#   CACHE=/var/tmp/berth-bench   debootstrap rootfs and Debian OCI layout, kept
#   KEEP_LOGS=dir        copy every build log there
#   STORE_DIR=/var/lib   where berth's roots go (a temp dir)
#   SETTLE=1             wait ~6 min after the cold-state deletions (0: don't;
#                        SETTLE_SECS=N: N s; see settle in common.sh)
#
# Needs: docker.io (daemon via scripts/start-dockerd), skopeo, busybox-static, runc;
# debootstrap for large. It fails (non-zero) if any build fails or the tools print
# different BENCH_RESULTs. Temp dirs, images and build caches it made are removed on
# exit (note: `docker builder prune -af` prunes all of dockerd's cache).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

CACHE=${CACHE:-/var/tmp/berth-bench}
PROJECTS=${PROJECTS:-small large}
TOOLS=${TOOLS:-berth docker}
NOOP_REPS=${NOOP_REPS:-2}
COLD_REPS=${COLD_REPS:-1}
MULTI_SECONDS=${MULTI_SECONDS-1 2 3 4}
LARGE_MODULES=${LARGE_MODULES:-30}
LARGE_FILES=${LARGE_FILES:-100}
LARGE_BUILT=${LARGE_BUILT:-5}
DOCKER=/usr/bin/docker
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
D_PREFIX=berth-bench-earth
BB_TAG=1.35
DEB_TAG=bookworm
KINDS=(earth dfile docker)

declare -A T RESULT TIMES LOGOF CHANGED BROOT
declare -a WARN=()

# log, die, now, elapsed, min, has_tool, settle, step_times; the projects and their
# bases (debian_layout, prepare_project), bench_result, private_berth
. "$here/common.sh"

work=
cleanup() {
	local rc=$?
	set +e
	if [[ -n $work && -d $work ]]; then
		if [[ -n ${KEEP_LOGS:-} ]]; then
			mkdir -p "$KEEP_LOGS" && cp -r "$work/logs/." "$KEEP_LOGS/" 2>/dev/null
		fi
		rm -rf "$work"
	fi
	if [[ -n ${stores:-} && -d $stores ]]; then
		findmnt -rn -o TARGET | awk -v w="$stores/" 'index($0, w) == 1' | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		rm -rf "$stores"
	fi
	if has_tool docker && [[ -n ${docker_used:-} ]]; then
		local imgs
		imgs=$("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep "^$D_PREFIX/" || true)
		[[ -n ${imgs// /} ]] && "$DOCKER" rmi -f $imgs >/dev/null 2>&1
		"$DOCKER" builder prune -af >/dev/null 2>&1
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || die "run as root (berth's runc executor, debootstrap)"
[[ " $TOOLS " == *" berth "* ]] || die "TOOLS must include berth"

work=$(mktemp -d /tmp/berth-bench-earthfile.XXXXXX)
mkdir -p "$work/logs"
stores=$(mktemp -d "${STORE_DIR:-/var/lib}/berth-bench-earth.XXXXXX")
chattr +T "$stores" 2>/dev/null || true

private_berth
BERTH=$work/berth
if has_tool docker; then
	"$repo/scripts/start-dockerd" || die "no docker daemon"
	docker_used=1
	KINDS=(earth dfile docker)
else
	KINDS=(earth dfile)
fi
command -v skopeo >/dev/null || die "skopeo is not installed"

bb_layout=$work/busybox-layout
"$repo/scripts/make-busybox-layout" "$bb_layout" "$BB_TAG" >/dev/null
declare -A LAYOUT TAG NAME
LAYOUT[small]=$bb_layout TAG[small]=$BB_TAG NAME[small]=$D_PREFIX/busybox:$BB_TAG
LAYOUT[large]=$CACHE/debian-layout TAG[large]=$DEB_TAG NAME[large]=$D_PREFIX/debian:$DEB_TAG

# write_earthfile PROJECT: the project's Dockerfile, step for step, as an Earthfile in
# its context (base named as in berth's store and dockerd).
write_earthfile() {
	local p=$1 f=$work/ctx-$1/Earthfile
	case $p in
	small)
		cat > "$f" <<EOF
VERSION 0.8
build:
    FROM ${NAME[small]}
    WORKDIR /app
    COPY . .
    RUN mkdir -p /out && for s in scripts/*.sh; do sh "\$s" /out; done
    RUN busybox md5sum src/*.txt > /out/sums && busybox wc -l src/*.txt > /out/lines
    RUN cat /out/sums /out/lines /out/words /out/upper /out/index | busybox sha256sum | busybox cut -c1-16 > /out/digest
    SAVE ARTIFACT /out

image:
    FROM ${NAME[small]}
    COPY +build/out /opt/app
    COPY etc/app.conf /etc/app.conf
    RUN echo "BENCH_RESULT=\$(cat /opt/app/digest)"
    SAVE IMAGE bench-small:latest
EOF
		;;
	large)
		cat > "$f" <<EOF
VERSION 0.8
build:
    FROM ${NAME[large]}
    WORKDIR /src
    COPY . .
    RUN set -e; mkdir -p /out/obj; \\
        for m in \$(cat build.list); do ls modules/\$m/*.c; done \\
          | xargs -P 2 -n 25 sh -c 'for f; do o=\${f##*/}; gcc -O1 -Iinclude -c "\$f" -o "/out/obj/\${o%.c}.o"; done' sh; \\
        gcc -O1 -Iinclude -o /out/app main.c /out/obj/*.o; \\
        echo "compiled \$(ls /out/obj | wc -l) objects"
    RUN /out/app > /out/result.txt && cat /out/result.txt
    SAVE ARTIFACT /out/app
    SAVE ARTIFACT /out/result.txt

image:
    FROM ${NAME[large]}
    COPY +build/app /usr/local/bin/app
    COPY +build/result.txt /etc/app-result.txt
    RUN app --check /etc/app-result.txt
    SAVE IMAGE bench-large:latest
EOF
		;;
	*) die "no Earthfile for project $p" ;;
	esac
}

# new_root PROJECT KIND: a new berth root holding only the project's base, imported.
new_root() {
	local p=$1 kind=$2 root=$stores/$1-$2-$RANDOM
	mkdir -p "$root"
	[[ -f $work/base-$p.tar ]] || tar -C "${LAYOUT[$p]}" -cf "$work/base-$p.tar" .
	"$BERTH" --root "$root" import -t "${NAME[$p]}" "$work/base-$p.tar" \
		>"$work/logs/import-$p-$kind.log" 2>&1 ||
		{ cat "$work/logs/import-$p-$kind.log" >&2; die "berth import of the $p base"; }
	BROOT[$p/$kind]=$root
}

docker_cold() { # project
	local imgs
	imgs=$("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep "^$D_PREFIX/out-" || true)
	[[ -z $imgs ]] || "$DOCKER" rmi -f $imgs >/dev/null
	"$DOCKER" builder prune -af >/dev/null
	"$DOCKER" rmi -f "${NAME[$1]}" >/dev/null 2>&1 || true
	skopeo copy -q "oci:${LAYOUT[$1]}:${TAG[$1]}" "docker-daemon:${NAME[$1]}" \
		>"$work/logs/skopeo-$1.log" 2>&1 || { cat "$work/logs/skopeo-$1.log" >&2; die "skopeo copy into dockerd ($1)"; }
	last_delete=$(now)
}
last_delete=0

# build KIND PROJECT LOG [TARGET]: one build, its wall time on stdout. Dies if it fails.
build() {
	local kind=$1 p=$2 logf=$3 target=${4:-+image} ctx=$work/ctx-$2 t0 t1 rc=0
	t0=$(now)
	case $kind in
	earth)
		(cd "$ctx" && "$BERTH" --root "${BROOT[$p/earth]}" --progress plain --no-output "$target") \
			>"$logf" 2>&1 || rc=$?
		;;
	dfile)
		"$BERTH" --root "${BROOT[$p/dfile]}" build --progress plain -f "$ctx/Dockerfile" \
			-t "bench-$p:latest" --build-arg "BASE=${NAME[$p]}" "$ctx" >"$logf" 2>&1 || rc=$?
		;;
	docker)
		DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain -f "$ctx/Dockerfile" \
			-t "$D_PREFIX/out-$p:latest" --build-arg "BASE=${NAME[$p]}" "$ctx" >"$logf" 2>&1 || rc=$?
		;;
	esac
	t1=$(now)
	if ((rc != 0)); then
		echo "--- last lines of $logf:" >&2
		tail -n 40 "$logf" >&2
		die "$kind build of $p failed (exit $rc); KEEP_LOGS=DIR keeps the logs"
	fi
	elapsed "$t0" "$t1"
}

# measure PROJECT SCENARIO REP KIND: one timed build, recorded.
measure() {
	local p=$1 s=$2 r=$3 kind=$4 logf t res
	logf=$work/logs/$p-$s$r-$kind.log
	t=$(build "$kind" "$p" "$logf")
	res=$(bench_result "$logf")
	case $s in
	noop) [[ -z $res ]] || WARN+=("$p no-op $r: $kind re-ran steps (see its log)") ;;
	*) RESULT[$p/$s/$kind]=$res ;;
	esac
	if [[ -z ${T[$p/$s/$kind]:-} ]] || awk -v a="$t" -v b="${T[$p/$s/$kind]}" 'BEGIN { exit !(a < b) }'; then
		T[$p/$s/$kind]=$t LOGOF[$p/$s/$kind]=$logf
	fi
	TIMES[$p/$s/$kind]+="$t "
}

# run_project PROJECT: the kinds take turns at every measurement.
run_project() {
	local p=$1 r i kind n=${#KINDS[@]}
	for ((r = 1; r <= COLD_REPS; r++)); do
		new_root "$p" earth
		new_root "$p" dfile
		has_tool docker && docker_cold "$p"
		settle
		# Rep r starts with the (r-1)th kind.
		for ((i = 0; i < n; i++)); do
			kind=${KINDS[$(((i + r - 1) % n))]}
			measure "$p" cold "$r" "$kind"
		done
	done
	for ((r = 1; r <= NOOP_REPS; r++)); do
		for kind in "${KINDS[@]}"; do measure "$p" noop "$r" "$kind"; done
	done
	for s in cold noop; do
		for kind in "${KINDS[@]}"; do log "  $p $s $kind: ${TIMES[$p/$s/$kind]}"; done
	done
	local k
	for k in "${KINDS[@]}"; do
		[[ -n ${RESULT[$p/cold/$k]:-} && ${RESULT[$p/cold/$k]} == "${RESULT[$p/cold/earth]}" ]] ||
			die "$p cold: BENCH_RESULT differs or is missing: earth=${RESULT[$p/cold/earth]:-none} $k=${RESULT[$p/cold/$k]:-none}"
	done
}

# The multi-target case: independent targets, then +all building them all.
run_multi() {
	local dir=$work/ctx-multi s i all longest=0 lt
	mkdir -p "$dir"
	{
		echo "VERSION 0.8"
		echo "FROM ${NAME[small]}"
		i=0
		for s in $MULTI_SECONDS; do
			i=$((i + 1))
			printf 't%d:\n    RUN sleep %s && echo t%d > /t\n    SAVE ARTIFACT /t\n' "$i" "$s" "$i"
			awk -v a="$s" -v b="$longest" 'BEGIN { exit !(a > b) }' && longest=$s lt=$i
		done
		echo "all:"
		for ((j = 1; j <= i; j++)); do echo "    BUILD +t$j"; done
	} > "$dir/Earthfile"
	LAYOUT[multi]=${LAYOUT[small]} TAG[multi]=${TAG[small]} NAME[multi]=${NAME[small]}
	for target in "+t$lt" +all; do
		new_root multi earth
		local logf=$work/logs/multi-${target#+}.log
		MULTI_T[$target]=$(build earth multi "$logf" "$target")
		log "  multi $target: ${MULTI_T[$target]}"
	done
	MULTI_LONGEST=+t$lt
	MULTI_N=$i
}
declare -A MULTI_T

# --- run ---------------------------------------------------------------------

start=$(now)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for p in $PROJECTS; do
	prepare_project "$p"
	write_earthfile "$p"
	nfiles=$(find "$work/ctx-$p" -type f | wc -l)
	log "project $p: $nfiles files in the context, base ${NAME[$p]}"
	run_project "$p"
done
[[ -z $MULTI_SECONDS ]] || run_multi
total=$(elapsed "$start" "$(now)")

# --- report ------------------------------------------------------------------

ratio() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }' || echo "-"; }
fmt() { [[ -n ${1:-} ]] && printf '%.3fs' "$1" || echo "-"; }
verdict() { [[ $1 == "-" ]] && echo "-" || awk -v r="${1%x}" 'BEGIN { printf "<=1.1x %s", (r <= 1.1 ? "ok" : "MISS") }'; }

echo
echo "berth +image (Earthfile) vs berth build (Dockerfile) vs docker build (BuildKit, docker.io $("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
echo "wall time per build; cold: min of $COLD_REPS (kinds taking turns at going first); no-op: min of $NOOP_REPS. Lower is better."
printf '%-6s %-14s %10s %10s %10s   %-11s %-12s %-12s\n' project scenario earthfile dockerfile docker earth/dfile target earth/docker
for p in $PROJECTS; do
	for s in cold noop; do
		e=${T[$p/$s/earth]:-} f=${T[$p/$s/dfile]:-} d=${T[$p/$s/docker]:-}
		r=$(ratio "$e" "$f")
		printf '%-6s %-14s %10s %10s %10s   %-11s %-12s %-12s\n' "$p" "$s" \
			"$(fmt "$e")" "$(fmt "$f")" "$(fmt "$d")" "$r" "$(verdict "$r")" "$(ratio "$e" "$d")"
	done
done
if [[ -n $MULTI_SECONDS ]]; then
	r=$(ratio "${MULTI_T[+all]}" "${MULTI_T[$MULTI_LONGEST]}")
	echo
	echo "multi-target Earthfile, cold: +all ($MULTI_N independent targets waiting $MULTI_SECONDS s) vs its longest target alone"
	printf '  %-10s %10s\n  %-10s %10s\n  all/longest %s  %s\n' "$MULTI_LONGEST" "$(fmt "${MULTI_T[$MULTI_LONGEST]}")" \
		+all "$(fmt "${MULTI_T[+all]}")" "$r" "$(verdict "$r")"
fi
echo "total benchmark time ${total}s; load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
for w in "${WARN[@]}"; do echo "warning: $w"; done

echo
echo "step timings (from --progress plain) of the reported runs:"
for p in $PROJECTS; do
	for s in cold noop; do
		for kind in "${KINDS[@]}"; do
			[[ -n ${LOGOF[$p/$s/$kind]:-} ]] || continue
			echo "  $p $s - $kind (${T[$p/$s/$kind]}s):"
			step_times "${LOGOF[$p/$s/$kind]}"
		done
	done
done
