#!/usr/bin/env bash
# Benchmark `berth build` against `DOCKER_BUILDKIT=1 docker build` (Debian docker.io
# 20.10) and `buildah bud --layers`, on the same projects and the same base images:
#
#   small  busybox base (scripts/make-busybox-layout), ~20 files, a few small RUN
#          steps, COPY of the sources, a multi-stage copy (bench/projects/small)
#   large  Debian bookworm minbase + gcc (debootstrap, cached in $CACHE), a generated
#          context of ~3000 C files, a RUN compiling 500 of them and linking, a RUN
#          using the result, a multi-stage copy (bench/projects/large/generate.sh)
#   regapp  issue 16's shape: the large project's Debian + gcc base pulled from a
#          registry on this machine (`berth registry serve` on 127.0.0.1, the same
#          image for berth and docker; buildah does not run it), ~120 C files compiled
#          into one program, ~3,000 small assets copied beside it; its one-file change
#          edits an asset (bench/projects/regapp/generate.sh)
#   incremental  the large project's context and program, compiled with the objects
#          in a cache mount, recompiling only sources newer than their objects
#          (bench/projects/large/Dockerfile.incremental): how BuildKit users keep a
#          one-file change from recompiling everything. Not run by default.
#
# For each project and tool it times, with `date +%s.%N` around the whole command:
#   cold    empty build cache, base image present: berth with a new --root (so the
#           base is imported from the OCI layout and unpacked inside the timed build);
#           docker after `docker builder prune -af`, the base removed and re-loaded;
#           buildah with every image but the base removed              (1 run)
#   cold, base pulled  regapp, berth only: a new --root where an untimed `berth pull` put
#           the base in the store: issue 16's cold case, the state after a first pull.
#           `berth pull` unpacks the layers as it downloads them (as `docker pull`
#           extracts them; before it kept the blobs only, the state `berth pull
#           --no-unpack` or `berth prune --all` leaves); compared with their cold builds
#           (1 run)
#   cold, base in   berth only: a new --root where an untimed warm-up build
#           (FROM base; RUN true) has unpacked the base, as loading it into dockerd or
#           buildah does; compared with their cold builds              (1 run)
#   no-op   the same build again, nothing changed                   (min of NOOP_REPS)
#   change  after one source file changed (a new content each run)
#           (min of CHANGE_REPS for small, LARGE_CHANGE_REPS for large)
# and prints a table with the times, berth/docker and berth/buildah (lower is better)
# and the issue's targets vs docker: no-op <= 0.5x, one-file change <= 0.7x, cold <= 0.9x
# (regapp, issue 16: no-op <= 0.3x, one-file change <= 0.5x, cold with the base pulled <= 1.0x),
# then each reported run's step timings (berth and docker, from --progress plain).
# The tools take turns at each measurement (berth, docker, buildah, berth, ...), so
# other load on the machine is spread over them; the load average is printed.
# Cold builds start ~6 min after the deletions that made the caches cold (see settle).
# Every build's output is checked: cold and change builds must print the same
# BENCH_RESULT under all three tools; a no-op that re-runs a step is flagged.
#
# Usage: bench/build.sh            (as root: runc, overlayfs, debootstrap, buildah)
#   BERTH_BIN=path       use this berth instead of `cargo build --release -p berth-cli`
#   PROJECTS="small large regapp"   which projects to run
#   TOOLS="berth docker buildah"  which tools to run (berth must stay for the ratios)
#   NOOP_REPS=2          no-op runs per tool (the minimum is reported)
#   CHANGE_REPS=2        one-file-change runs per tool for small; LARGE_CHANGE_REPS=2
#   LARGE_MODULES=30 LARGE_FILES=100 LARGE_BUILT=5   shape of the large context
#   REGAPP_CFILES=120 REGAPP_ASSETS=3000   shape of the regapp context
#   CACHE=/var/tmp/berth-bench   debootstrap rootfs and Debian OCI layout, kept
#   KEEP_LOGS=dir        copy every build log there
#   STORE_DIR=/var/lib   where berth's roots and buildah's storage go (a temp dir)
#   SETTLE=1             wait ~6 min after the cold-state deletions (0: don't;
#                        SETTLE_SECS=N: N s; see settle in common.sh)
#   PULL_ARGS=           extra arguments of the untimed `berth pull` of "cold, base
#                        pulled" (--no-unpack: blobs only, what berth pull left before)
#
# Needs: docker.io (daemon via scripts/start-dockerd), buildah, skopeo, debootstrap,
# busybox-static, runc. Contacts only Debian's mirror (debootstrap, first run only).
# It fails (non-zero) if any build fails. Temp dirs, images and build caches it made
# are removed on exit (note: `docker builder prune -af` prunes all of dockerd's cache).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

CACHE=${CACHE:-/var/tmp/berth-bench}
PROJECTS=${PROJECTS:-small large regapp}
TOOLS=${TOOLS:-berth docker buildah}
NOOP_REPS=${NOOP_REPS:-2}
CHANGE_REPS=${CHANGE_REPS:-2}
LARGE_CHANGE_REPS=${LARGE_CHANGE_REPS:-2}
LARGE_MODULES=${LARGE_MODULES:-30}
LARGE_FILES=${LARGE_FILES:-100}
LARGE_BUILT=${LARGE_BUILT:-5}
REGAPP_CFILES=${REGAPP_CFILES:-120}
REGAPP_ASSETS=${REGAPP_ASSETS:-3000}
DOCKER=/usr/bin/docker
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Names in dockerd and in buildah's (private) store.
D_PREFIX=berth-bench
BB_TAG=1.35
DEB_TAG=bookworm

SCENARIOS=(cold coldpulled coldbase noop change)
declare -A T        # T[project/scenario/tool] = seconds
declare -A RESULT   # RESULT[project/scenario/rep/tool] = BENCH_RESULT value
declare -A LOGOF    # LOGOF[project/scenario/tool] = log of the best run
declare -a WARN=()

# log, die, now, elapsed, min, has_tool; the projects and their bases (debian_rootfs,
# oci_layout, prepare_project, set_source, changed_file), bench_result, settle, step_times
. "$here/common.sh"

work=
cleanup() {
	local rc=$?
	set +e
	[[ -n ${reg_pid:-} ]] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null
	if [[ -n $work && -d $work ]]; then
		if [[ -n ${KEEP_LOGS:-} ]]; then
			mkdir -p "$KEEP_LOGS" && cp -r "$work/logs/." "$KEEP_LOGS/" 2>/dev/null
		fi
		rm -rf "$work"
	fi
	if [[ -n ${stores:-} && -d $stores ]]; then
		if has_tool buildah && [[ -d $stores/buildah ]]; then
			"${BUILDAH[@]}" rm -a >/dev/null 2>&1
			"${BUILDAH[@]}" rmi -a -f >/dev/null 2>&1
		fi
		# Anything still mounted below $stores (buildah's or berth's overlays), deepest first.
		findmnt -rn -o TARGET | awk -v w="$stores/" 'index($0, w) == 1' | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		rm -rf "$stores"
	fi
	if has_tool docker && [[ -n ${docker_used:-} ]]; then
		local imgs
		imgs=$("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep "^$D_PREFIX/" || true)
		[[ -n ${DNAME[regapp]:-} ]] && imgs+=" ${DNAME[regapp]}"
		[[ -n ${imgs// /} ]] && "$DOCKER" rmi -f $imgs >/dev/null 2>&1
		"$DOCKER" builder prune -af >/dev/null 2>&1
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || die "run as root (berth's runc executor, buildah, debootstrap)"
[[ " $TOOLS " == *" berth "* ]] || die "TOOLS must include berth"
for t in $TOOLS; do [[ $t == berth || $t == docker || $t == buildah ]] || die "unknown tool $t"; done

work=$(mktemp -d /tmp/berth-bench-build.XXXXXX)
mkdir -p "$work/logs"
# berth's roots and buildah's storage live beside dockerd's (/var/lib), not in /tmp,
# where the file systems' churn of other programs lands. +T (Orlov top directory)
# spreads their subdirectories over ext4 block groups, so one tool's deletions do not
# slow the next one's file creation (see "settle" below).
stores=$(mktemp -d "${STORE_DIR:-/var/lib}/berth-bench.XXXXXX")
chattr +T "$stores" 2>/dev/null || true

# --- tools -------------------------------------------------------------------

private_berth
BERTH=$work/berth
"$BERTH" build --help >/dev/null || die "$BERTH has no build command"

if has_tool docker; then
	"$repo/scripts/start-dockerd" || die "no docker daemon"
	docker_used=1
fi
if has_tool buildah; then
	command -v buildah >/dev/null || {
		log "installing buildah"
		apt-get install -y buildah >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y buildah >/dev/null; }
	}
	BUILDAH_DRIVER=overlay
	buildah_store() { echo "containers-storage:[$BUILDAH_DRIVER@$stores/buildah/root+$stores/buildah/run]$1"; }
	set_buildah() {
		BUILDAH=(buildah --root "$stores/buildah/root" --runroot "$stores/buildah/run" --storage-driver "$BUILDAH_DRIVER")
	}
	mkdir -p "$stores/buildah"
	set_buildah
fi
command -v skopeo >/dev/null || die "skopeo is not installed"

# --- base images -------------------------------------------------------------

# busybox: an OCI layout for berth, the same image loaded into dockerd and buildah.
bb_layout=$work/busybox-layout
"$repo/scripts/make-busybox-layout" "$bb_layout" "$BB_TAG" >/dev/null

# Per project: the base as each tool names it.
declare -A LAYOUT TAG DNAME
LAYOUT[small]=$bb_layout TAG[small]=$BB_TAG DNAME[small]=$D_PREFIX/busybox:$BB_TAG
LAYOUT[large]=$CACHE/debian-layout TAG[large]=$DEB_TAG DNAME[large]=$D_PREFIX/debian:$DEB_TAG
LAYOUT[incremental]=${LAYOUT[large]} TAG[incremental]=$DEB_TAG DNAME[incremental]=${DNAME[large]}
# regapp: the Debian layout pushed to a `berth registry serve` of its own on loopback
# (start_registry), which berth and docker both pull from; DNAME is set there.
LAYOUT[regapp]=${LAYOUT[large]} TAG[regapp]=$DEB_TAG

# The tools a project runs with: regapp's base lives in a registry, which the
# buildah comparison (bases loaded into its store, --pull=never) does not cover.
tools_of() { # project
	local t out=
	for t in $TOOLS; do
		[[ $1 == regapp && $t == buildah ]] && continue
		out+="$t "
	done
	echo "$out"
}

# start_registry: `berth registry serve` on a free port of 127.0.0.1 over its own
# root, with the Debian base pushed to it as berth-bench/debian:$DEB_TAG.
start_registry() {
	local port
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	"$BERTH" registry serve --addr "127.0.0.1:$port" --root "$stores/registry" \
		>"$work/logs/registry.log" 2>&1 &
	reg_pid=$!
	local i
	for i in $(seq 100); do
		curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break
		((i == 100)) && die "berth registry serve did not start (see $work/logs/registry.log)"
		sleep 0.1
	done
	DNAME[regapp]=127.0.0.1:$port/$D_PREFIX/debian:$DEB_TAG
	skopeo copy -q --dest-tls-verify=false "oci:${LAYOUT[regapp]}:$DEB_TAG" "docker://${DNAME[regapp]}" \
		>"$work/logs/skopeo-registry.log" 2>&1 ||
		{ cat "$work/logs/skopeo-registry.log" >&2; die "skopeo copy into the bench registry"; }
	log "registry on 127.0.0.1:$port holds ${DNAME[regapp]}"
}

base_ref() { # tool project
	if [[ $2 == regapp ]]; then
		echo "${DNAME[regapp]}"
		return
	fi
	case $1 in
	berth) echo "oci-layout://${LAYOUT[$2]}:${TAG[$2]}" ;;
	docker) echo "${DNAME[$2]}" ;;
	buildah) echo "localhost/${DNAME[$2]}" ;;
	esac
}

docker_load_base() { # project
	"$DOCKER" rmi -f "${DNAME[$1]}" >/dev/null 2>&1 || true
	if [[ $1 == regapp ]]; then
		# As a docker user has it: pulled from the registry (dockerd speaks HTTP to 127.0.0.0/8).
		"$DOCKER" pull -q "${DNAME[$1]}" >"$work/logs/docker-pull-$1.log" 2>&1 ||
			{ cat "$work/logs/docker-pull-$1.log" >&2; die "docker pull ${DNAME[$1]}"; }
		return
	fi
	skopeo copy -q "oci:${LAYOUT[$1]}:${TAG[$1]}" "docker-daemon:${DNAME[$1]}" >"$work/logs/skopeo-docker-$1.log" 2>&1 ||
		{ cat "$work/logs/skopeo-docker-$1.log" >&2; die "skopeo copy into dockerd ($1)"; }
}

buildah_load_base() { # project
	if ! skopeo copy -q "oci:${LAYOUT[$1]}:${TAG[$1]}" "$(buildah_store "localhost/${DNAME[$1]}")" \
		>"$work/logs/skopeo-buildah-$1.log" 2>&1; then
		if [[ $BUILDAH_DRIVER == overlay ]]; then
			log "buildah: overlay storage failed ($(tail -n 1 "$work/logs/skopeo-buildah-$1.log")); using vfs"
			WARN+=("buildah ran with the vfs storage driver (overlay failed)")
			BUILDAH_DRIVER=vfs
			set_buildah
			"${BUILDAH[@]}" images >/dev/null 2>&1 || true
			rm -rf "$stores/buildah/root" "$stores/buildah/run"
			buildah_load_base "$1"
			return
		fi
		cat "$work/logs/skopeo-buildah-$1.log" >&2
		die "skopeo copy into buildah's store ($1)"
	fi
}

# --- projects ----------------------------------------------------------------

declare -A CHANGED BROOT

# --- builds ------------------------------------------------------------------

# build TOOL PROJECT LOG: one build, its wall time on stdout. Dies if it fails.
build() {
	local tool=$1 p=$2 logf=$3 ctx=$work/ctx-$2 base t0 t1 rc=0
	base=$(base_ref "$tool" "$p")
	t0=$(now)
	case $tool in
	berth)
		"$BERTH" --root "${BROOT[$p]}" build --progress plain -f "$ctx/Dockerfile" \
			-t "bench-$p:latest" --build-arg "BASE=$base" "$ctx" >"$logf" 2>&1 || rc=$?
		;;
	docker)
		DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain -f "$ctx/Dockerfile" \
			-t "$D_PREFIX/out-$p:latest" --build-arg "BASE=$base" "$ctx" >"$logf" 2>&1 || rc=$?
		;;
	buildah)
		"${BUILDAH[@]}" bud --layers --pull=never -f "$ctx/Dockerfile" \
			-t "localhost/$D_PREFIX/out-$p:latest" --build-arg "BASE=$base" "$ctx" >"$logf" 2>&1 || rc=$?
		;;
	esac
	t1=$(now)
	if ((rc != 0)); then
		echo "--- last lines of $logf:" >&2
		tail -n 40 "$logf" >&2
		die "$tool build of $p failed (exit $rc); KEEP_LOGS=DIR keeps the logs"
	fi
	elapsed "$t0" "$t1"
}

# This VM's ext4 has no journal, and ext4 then avoids inodes freed in the last minutes
# when it allocates new ones: right after a mass deletion (docker builder prune, rmi,
# buildah rmi) creating thousands of files costs seconds of kernel time in whichever
# tool comes next (regapp's cold berth build unpacks its base then). So settle waits
# out that window after the deletions (see common.sh).
last_delete=0

# Make TOOL's cache cold for PROJECT (untimed).
make_cold() {
	local tool=$1 p=$2 id
	case $tool in
	berth) BROOT[$p]=$stores/berth-$p-cold ;;
	docker)
		local imgs
		imgs=$("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep "^$D_PREFIX/out-" || true)
		[[ -z $imgs ]] || "$DOCKER" rmi -f $imgs >/dev/null
		"$DOCKER" builder prune -af >/dev/null
		docker_load_base "$p"
		last_delete=$(now)
		;;
	buildah)
		"${BUILDAH[@]}" rm -a >/dev/null 2>&1 || true
		# Every image but the bases (the other project's base may be there too).
		local bases=" " q
		for q in small large; do
			bases+="$("${BUILDAH[@]}" images -q --no-trunc "localhost/${DNAME[$q]}" 2>/dev/null || true) "
		done
		for id in $("${BUILDAH[@]}" images -a -q --no-trunc); do
			[[ $bases == *" $id "* ]] && continue
			"${BUILDAH[@]}" rmi -f "$id" >/dev/null 2>&1 || true
		done
		"${BUILDAH[@]}" images -q "localhost/${DNAME[$p]}" >/dev/null 2>&1 || buildah_load_base "$p"
		last_delete=$(now)
		;;
	esac
}

warm_up_berth() { # project
	mkdir -p "$work/warmup"
	printf 'ARG BASE\nFROM ${BASE}\nRUN true\n' > "$work/warmup/Dockerfile"
	"$BERTH" --root "${BROOT[$1]}" build --progress plain \
		--build-arg "BASE=$(base_ref berth "$1")" "$work/warmup" >"$work/logs/$1-warmup-berth.log" 2>&1 ||
		{ tail -n 40 "$work/logs/$1-warmup-berth.log" >&2; die "berth warm-up build of $1 failed"; }
}

# measure PROJECT SCENARIO REP TOOL: one timed build, recorded.
measure() {
	local p=$1 s=$2 r=$3 tool=$4 logf t res
	logf=$work/logs/$p-$s$r-$tool.log
	t=$(build "$tool" "$p" "$logf")
	res=$(bench_result "$logf")
	case $s in
	noop) [[ -z $res ]] || WARN+=("$p no-op $r: $tool re-ran steps (see its log)") ;;
	*) RESULT[$p/$s/$r/$tool]=$res ;;
	esac
	# Keep the fastest run of each (project, scenario, tool).
	if [[ -z ${T[$p/$s/$tool]:-} ]] || awk -v a="$t" -v b="${T[$p/$s/$tool]}" 'BEGIN { exit !(a < b) }'; then
		T[$p/$s/$tool]=$t LOGOF[$p/$s/$tool]=$logf
	fi
	TIMES[$p/$s/$tool]+="$t "
}
declare -A TIMES

# run_project PROJECT: the tools take turns at every measurement, so a disturbance
# (other work on the machine) does not land on one tool only.
run_project() {
	local p=$1 r tool reps tools
	tools=$(tools_of "$p")
	local TOOLS=$tools
	set_source "$p" 0
	for tool in $TOOLS; do make_cold "$tool" "$p"; done
	settle
	for tool in $TOOLS; do measure "$p" cold 1 "$tool"; done
	# regapp: berth from a new root whose store holds the base `berth pull` brought (and
	# unpacked, as docker pull extracts; a berth before that kept the blobs only).
	if [[ $p == regapp ]]; then
		BROOT[$p]=$stores/berth-$p-pulled
		# shellcheck disable=SC2086 # PULL_ARGS is words
		"$BERTH" --root "${BROOT[$p]}" pull ${PULL_ARGS:-} "$(base_ref berth "$p")" >"$work/logs/$p-pull-berth.log" 2>&1 ||
			{ tail -n 40 "$work/logs/$p-pull-berth.log" >&2; die "berth pull of $p's base failed"; }
		settle
		measure "$p" coldpulled 1 berth
	fi
	# berth again from a new root, but with the base already imported and unpacked
	# by an untimed warm-up build (FROM base; RUN true), as a base loaded into
	# dockerd or buildah's store is before their cold builds.
	BROOT[$p]=$stores/berth-$p
	warm_up_berth "$p"
	measure "$p" coldbase 1 berth
	for ((r = 1; r <= NOOP_REPS; r++)); do
		for tool in $TOOLS; do measure "$p" noop "$r" "$tool"; done
	done
	reps=$CHANGE_REPS
	[[ $p != small ]] && reps=$LARGE_CHANGE_REPS
	for ((r = 1; r <= reps; r++)); do
		set_source "$p" "$r"
		for tool in $TOOLS; do measure "$p" change "$r" "$tool"; done
	done
	set_source "$p" 0
	for s in "${SCENARIOS[@]}"; do
		for tool in $TOOLS; do
			[[ -z ${TIMES[$p/$s/$tool]:-} ]] || log "  $p $s $tool: ${TIMES[$p/$s/$tool]}"
		done
	done
}

# --- run ---------------------------------------------------------------------

start=$(now)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for p in $PROJECTS; do
	prepare_project "$p"
	[[ $p == regapp && -z ${reg_pid:-} ]] && start_registry
	nfiles=$(find "$work/ctx-$p" -type f | wc -l)
	log "project $p: $nfiles files in the context, base ${LAYOUT[$p]}:${TAG[$p]}"
	has_tool buildah && [[ " $(tools_of "$p") " == *" buildah "* ]] && buildah_load_base "$p"
	run_project "$p"

	# The same work must have been done by every tool (berth's coldbase = the others' cold).
	for key in "${!RESULT[@]}"; do
		[[ $key == "$p/"*"/berth" ]] || continue
		k=${key%/berth}
		for tool in $(tools_of "$p"); do
			o=$k/$tool
			[[ $tool != berth ]] && o=${o/\/coldbase\//\/cold\/} && o=${o/\/coldpulled\//\/cold\/}
			[[ ${RESULT[$o]:-} == "${RESULT[$key]}" && -n ${RESULT[$key]} ]] ||
				die "$k: BENCH_RESULT differs or is missing: berth=${RESULT[$key]:-none} $tool=${RESULT[$o]:-none}"
		done
	done
done
total=$(elapsed "$start" "$(now)")

# --- report ------------------------------------------------------------------

declare -A TARGET=([cold]=0.9 [coldbase]=0.9 [noop]=0.5 [change]=0.7
	[regapp/cold]=none [regapp/coldpulled]=1.0 [regapp/coldbase]=none [regapp/noop]=0.3 [regapp/change]=0.5)
declare -A LABEL=([cold]="cold" [coldpulled]="cold, pulled*" [coldbase]="cold, base in*" [noop]="no-op rebuild" [change]="one-file change")
ratio() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }' || echo "-"; }
fmt() { [[ -n ${1:-} ]] && printf '%.3fs' "$1" || echo "-"; }

echo
echo "berth build vs docker build (BuildKit, docker.io $("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null || echo '?')) vs buildah bud --layers ($(buildah --version 2>/dev/null | awk '{print $3}'), storage ${BUILDAH_DRIVER:-})"
echo "wall time per build; cold: 1 run; no-op: min of $NOOP_REPS; change: min of $CHANGE_REPS (small), $LARGE_CHANGE_REPS (large). Lower is better."
printf '%-6s %-16s %10s %10s %10s   %-13s %-11s %-13s\n' project scenario berth docker buildah berth/docker "target" berth/buildah
for p in $PROJECTS; do
	for s in "${SCENARIOS[@]}"; do
		b=${T[$p/$s/berth]:-} d=${T[$p/$s/docker]:-} h=${T[$p/$s/buildah]:-}
		# Docker's and buildah's cold builds already had their base unpacked.
		[[ $s == coldbase || $s == coldpulled ]] && d=${T[$p/cold/docker]:-} h=${T[$p/cold/buildah]:-}
		rd=$(ratio "$b" "$d")
		verdict="-"
		if [[ $rd != "-" && ${TARGET[$p/$s]:-} != none ]]; then
			verdict=$(awk -v r="${rd%x}" -v t="${TARGET[$p/$s]:-${TARGET[$s]}}" 'BEGIN { printf "<=%.1fx %s", t, (r <= t ? "ok" : "MISS") }')
		fi
		printf '%-6s %-16s %10s %10s %10s   %-13s %-11s %-13s\n' "$p" "${LABEL[$s]}" \
			"$(fmt "$b")" "$(fmt "$d")" "$(fmt "$h")" "$rd" "$verdict" "$(ratio "$b" "$h")"
	done
done
echo "* berth cold with the base already imported and unpacked in its new --root (an untimed"
echo "  warm-up build FROM base; RUN true), vs docker's and buildah's cold builds (the same"
echo "  numbers as in their cold row: a base loaded into dockerd or buildah is unpacked then)."
[[ " $PROJECTS " == *" regapp "* ]] && echo "  pulled: the same, but the base came by \`berth pull\` (which unpacks it, as docker pull does):
  issue 16's cold case (regapp's targets apply to it, not to cold, which pulls, nor base in)."
if [[ " $PROJECTS " == *" large "* ]]; then
	echo "  large, one-file change: every tool re-runs the whole gcc RUN (see its step time"
	echo "  below), which bounds the ratio from below; 'incremental' is the same project"
	echo "  with its objects in a cache mount."
fi
echo "total benchmark time ${total}s; load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
for w in "${WARN[@]}"; do echo "warning: $w"; done

echo
echo "step timings (from --progress plain) of the reported runs:"
for p in $PROJECTS; do
	for s in "${SCENARIOS[@]}"; do
		for tool in berth docker; do
			[[ -n ${LOGOF[$p/$s/$tool]:-} ]] || continue
			echo "  $p ${LABEL[$s]} - $tool (${T[$p/$s/$tool]}s):"
			step_times "${LOGOF[$p/$s/$tool]}"
		done
	done
done
