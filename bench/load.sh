#!/usr/bin/env bash
# Benchmark `berth load` (registry proxy and tar stream) against `docker load -i` of a
# docker-archive of the same image, into Debian's dockerd (docker.io 20.10).
#
# The image: busybox (scripts/make-busybox-layout) + $PARTS RUN steps each writing
# $PART_MIB MiB of /dev/urandom into /data/partN (default 3 x 100 MiB: ~315 MB, four
# layers), built by berth as berth-bench/load:big; berth-bench/load:next is the same
# Dockerfile plus one small RUN (the same base layers from berth's cache, one new layer).
# The peer's archives come from the same builds: `berth build --output type=oci,...`
# then `skopeo copy oci-archive:... docker-archive:...` (berth-bench/peer:big/:next;
# the same image IDs as berth's).
#
# Each case is timed $REPS times (median reported), with `date +%s.%N` around
#   load      the load command alone, and
#   runnable  the load command plus `docker run --rm IMAGE true` (the table's ratios
#             use this one: time until the image is runnable)
# for:
#   proxy     berth load berth-bench/load:big                     (registry proxy)
#   tar       berth load --no-registry-proxy berth-bench/load:big (docker-archive stream)
#   peer      docker load -i big.docker.tar
#   reload    :big already in dockerd (loaded untimed with `berth load`), then
#             berth load berth-bench/load:next   vs   docker load -i next.docker.tar
# Before every attempt the images are removed from dockerd (`docker rmi -f` by name
# and ID) and the script checks in dockerd's layer store (overlay2 layerdb) that their
# layers are really gone (for reload: that :big's are there and :next's new one is
# not); only if some are left does it fall back to `docker image prune -f` (which
# would also delete other people's dangling images, so it is not run by default).
# The cases take turns in every round (proxy, tar, peer, reload berth, reload peer),
# each after `sync` and a $SETTLE s pause, so the disk's write-back of the previous
# attempt and other load on the VM are spread over all of them.
# The base busybox layer (~2 MB) may stay in dockerd if other images there share it
# (it is not removed: they are not ours); that is the same for every case.
#
# Targets (issue): both berth paths <= 1.0x docker load, re-load <= 0.3x docker load.
# The verdicts are only reported; the script fails (non-zero) on any failed build,
# load or run, on a wrong image ID, or when the proxy path fell back to the tar.
#
# Then (DIAG=1, the default) where the time goes, untimed by the table:
#   - berth load of an image dockerd already has (berth's fixed cost: start, pre-flight,
#     manifest, tag, inspect);
#   - one proxy load with BERTH_LOG=info: the proxy's request log, each line's offset
#     from the start of `berth load`;
#   - `docker pull` by digest of the same image from `berth registry serve --read-only`
#     over the same store and from distribution (docker-registry, same gzip blobs,
#     pushed with skopeo), with the pull's progress lines timestamped (download vs
#     extraction), and from distribution with the big layers re-encoded: uncompressed,
#     and `gzip -1` (stored blocks for random data; berth's zlib-rs level 1 is not);
#   - `docker load -i` of a hand-made docker-archive holding the store's gzip blobs as
#     layers (what the tar path streams), to tell berth's streaming from the daemon's work;
#   - curl GET of the big blobs from berth's registry, gunzip -c of them (zlib).
#
# Usage: bench/load.sh                 (as root: berth's runc executor; dockerd)
#   BERTH_BIN=path   use this berth instead of `cargo build --release -p berth-cli`
#   REPS=3           attempts per case (the median is reported)
#   PARTS=3 PART_MIB=100   shape of the image
#   COMPRESSION=gzip berth's layer compression (berth build --compression)
#   DATA=random      what the parts hold: random (incompressible) or text (`seq` output,
#                    which gzip shrinks to about a quarter, like program text and docs)
#   SETTLE=3         seconds to wait (after sync) before each timed attempt
#   DIAG=1           run the diagnostics (0: table only); DIAG_REPS=2 attempts per pull
#   DOCKER=/usr/bin/docker   the docker client (Debian's 20.10)
#   STORE_DIR=/var/lib       where berth's --root goes (a temp dir, removed)
#
# Needs: docker.io (daemon via scripts/start-dockerd), skopeo, jq, busybox-static, runc,
# curl; docker-registry for the diagnostics (skipped without it). Only 127.0.0.1 is
# contacted; nothing is pulled from Docker Hub.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

REPS=${REPS:-3}
PARTS=${PARTS:-3}
PART_MIB=${PART_MIB:-100}
DATA=${DATA:-random}
COMPRESSION=${COMPRESSION:-gzip}
case $DATA in
random) SOURCE="head -c $((PART_MIB * 1024 * 1024)) /dev/urandom" ;;
text) SOURCE="seq 1 100000000 | head -c $((PART_MIB * 1024 * 1024))" ;;
*) echo "DATA must be random or text" >&2; exit 2 ;;
esac
SETTLE=${SETTLE:-3}
DIAG=${DIAG:-1}
DIAG_REPS=${DIAG_REPS:-2}
DOCKER=${DOCKER:-/usr/bin/docker}
[[ -x $DOCKER ]] || DOCKER=docker
BIG=berth-bench/load:big
NEXT=berth-bench/load:next
PEER_BIG=berth-bench/peer:big
PEER_NEXT=berth-bench/peer:next
BB_TAG=1.35

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

declare -A T      # T[case/kind] = "secs secs ..." (kind: load, run = load + docker run)
declare -A MED    # MED[case/kind] = median
declare -a PIDS=()
ALLRUN=        # every docker run --rm IMAGE true, s

# log, die, now, elapsed, min, has_tool
. "$here/common.sh"
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

work=
stores=
cleanup() {
	local rc=$? p
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	if [[ -n ${docker_used:-} ]]; then
		remove_images >/dev/null 2>&1
	fi
	if [[ -n $stores && -d $stores ]]; then
		# Anything berth left mounted below its root (runc rootfs overlays), deepest first.
		findmnt -rn -o TARGET | awk -v w="$stores/" 'index($0, w) == 1' | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		rm -rf "$stores"
	fi
	[[ -n $work && -d $work ]] && rm -rf "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- setup -------------------------------------------------------------------

[[ $(id -u) == 0 ]] || die "run as root (berth's runc executor, dockerd's layer store)"
for c in skopeo jq curl runc sha256sum gunzip; do
	command -v "$c" >/dev/null || die "$c is not installed"
done
[[ $REPS -ge 1 ]] || die "REPS must be >= 1"

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-load.XXXXXX")
mkdir -p "$work/logs"
stores=$(mktemp -d "${STORE_DIR:-/var/lib}/berth-bench-load.XXXXXX")
ROOT=$stores/root

if [[ -n ${BERTH_BIN:-} ]]; then
	cp "$BERTH_BIN" "$work/berth"
else
	log "building berth (release)"
	(cd "$repo" && cargo build --release -p berth-cli) >"$work/logs/cargo.log" 2>&1 ||
		{ tail -n 30 "$work/logs/cargo.log" >&2; die "cargo build --release -p berth-cli"; }
	# A private copy: a concurrent rebuild must not swap the binary mid-benchmark.
	cp "$repo/target/release/berth" "$work/berth"
fi
BERTH=$work/berth
"$BERTH" load --help >/dev/null 2>&1 || die "$BERTH has no load command"
# An empty config: ignore the user's own berth config ([docker] registry_proxy etc.).
: >"$work/berth.toml"
berth() { "$BERTH" --root "$ROOT" --config "$work/berth.toml" "$@"; }

"$repo/scripts/start-dockerd" || die "no docker daemon"
docker_used=1
DOCKER_ROOT=$("$DOCKER" info --format '{{.DockerRootDir}}')
DOCKER_DRIVER=$("$DOCKER" info --format '{{.Driver}}')
LAYERDB=$DOCKER_ROOT/image/$DOCKER_DRIVER/layerdb/sha256
[[ -d $LAYERDB ]] || { log "no $LAYERDB: layer removal checks are skipped"; LAYERDB=; }

# --- images ------------------------------------------------------------------

log "making the images: busybox + $PARTS x $PART_MIB MiB of $DATA data"
"$repo/scripts/make-busybox-layout" "$work/busybox" "$BB_TAG" >/dev/null
mkdir -p "$work/ctx"
{
	echo "FROM oci-layout://$work/busybox:$BB_TAG"
	for ((i = 1; i <= PARTS; i++)); do
		echo "RUN mkdir -p /data && $SOURCE > /data/part$i"
	done
} >"$work/ctx/Dockerfile"
{
	cat "$work/ctx/Dockerfile"
	echo "RUN echo next > /data/next"
} >"$work/ctx/Dockerfile.next"

build() { # tag dockerfile oci-archive
	local t0
	t0=$(now)
	# The peer's archive needs gzip layers (skopeo cannot write zstd into a
	# docker-archive): with another compression, a second build (cached, with
	# SOURCE_DATE_EPOCH so the config and image ID stay the same) re-encodes them.
	berth build --progress plain -t "$1" -f "$2" --output "type=oci,dest=$3" "$work/ctx" \
		>"$work/logs/build-${1##*:}.log" 2>&1 ||
		{ tail -n 30 "$work/logs/build-${1##*:}.log" >&2; die "berth build -t $1"; }
	if [[ $COMPRESSION != gzip ]]; then
		berth build --progress plain --compression "$COMPRESSION" -t "$1" -f "$2" "$work/ctx" \
			>>"$work/logs/build-${1##*:}.log" 2>&1 ||
			{ tail -n 30 "$work/logs/build-${1##*:}.log" >&2; die "berth build --compression $COMPRESSION -t $1"; }
	fi
	log "built $1 in $(elapsed "$t0" "$(now)") s"
}
# One build each gives both the store's image and the OCI archive: berth stamps the
# config with the build time, so a second (cached) build would be another image ID
# (unless SOURCE_DATE_EPOCH, set for COMPRESSION other than gzip).
[[ $COMPRESSION != gzip ]] && export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
build "$BIG" "$work/ctx/Dockerfile" "$work/big.oci.tar"
build "$NEXT" "$work/ctx/Dockerfile.next" "$work/next.oci.tar"

skopeo copy -q "oci-archive:$work/big.oci.tar" "docker-archive:$work/big.docker.tar:$PEER_BIG" ||
	die "skopeo copy of big to docker-archive"
skopeo copy -q "oci-archive:$work/next.oci.tar" "docker-archive:$work/next.docker.tar:$PEER_NEXT" ||
	die "skopeo copy of next to docker-archive"

# Manifests, configs and chain IDs, from the OCI archives (the same as berth's store).
declare -A ID MANIFEST_DIGEST LAYERS DIFFS CHAINS
for v in big next; do
	m=$(skopeo inspect --raw "oci-archive:$work/$v.oci.tar")
	ID[$v]=$(jq -r .config.digest <<<"$m")
	MANIFEST_DIGEST[$v]=sha256:$(printf '%s' "$m" | sha256sum | cut -d' ' -f1)
	LAYERS[$v]=$(jq -r '.layers[].digest' <<<"$m" | tr '\n' ' ')
	DIFFS[$v]=$(skopeo inspect --config --raw "oci-archive:$work/$v.oci.tar" | jq -r '.rootfs.diff_ids[]' | tr '\n' ' ')
	chain= chains=
	for d in ${DIFFS[$v]}; do
		if [[ -z $chain ]]; then chain=$d; else chain=sha256:$(printf '%s %s' "$chain" "$d" | sha256sum | cut -d' ' -f1); fi
		chains+="$chain "
	done
	CHAINS[$v]=$chains
done
read -ra big_layers <<<"${LAYERS[big]}"
read -ra next_layers <<<"${LAYERS[next]}"
((${#next_layers[@]} == ${#big_layers[@]} + 1)) || die ":next has ${#next_layers[@]} layers, want ${#big_layers[@]} + 1"
for ((i = 0; i < ${#big_layers[@]}; i++)); do
	[[ ${big_layers[i]} == "${next_layers[i]}" ]] || die ":next's layer $((i + 1)) is not :big's (the build cache was not used)"
done
[[ $(berth images | awk -v r="${BIG%%:*}" -v t="${BIG##*:}" '$1 == r && $2 == t { print $3 }') == "${ID[big]:7:12}" ]] ||
	die "berth's $BIG is not the exported image ${ID[big]}"
rm -f "$work/big.oci.tar" "$work/next.oci.tar" # only the docker-archives are needed from here

size_big=$(for l in "${big_layers[@]}"; do stat -c %s "$ROOT/blobs/sha256/${l#sha256:}"; done | awk '{ s += $1 } END { print s }')
size_next_new=$(stat -c %s "$ROOT/blobs/sha256/${next_layers[-1]#sha256:}")
log "big: ${ID[big]}, ${#big_layers[@]} layers, $((size_big / 1000000)) MB of gzip blobs in berth's store; big.docker.tar: $(($(stat -c %s "$work/big.docker.tar") / 1000000)) MB (uncompressed layers)"
log "next: ${ID[next]}, new layer $size_next_new bytes; next.docker.tar: $(($(stat -c %s "$work/next.docker.tar") / 1000000)) MB"

# --- dockerd state -------------------------------------------------------------

remove_images() {
	local ref
	for ref in "$BIG" "$NEXT" "$PEER_BIG" "$PEER_NEXT" ${ID[big]:-} ${ID[next]:-}; do
		"$DOCKER" rmi -f "$ref" >/dev/null 2>&1 || true
	done
}

# layers_present CHAIN...: how many of these chain IDs dockerd's layer store holds.
layers_present() {
	local c n=0
	for c in "$@"; do [[ -e $LAYERDB/${c#sha256:} ]] && n=$((n + 1)); done
	echo $n
}

# Remove our images; check every layer above the (shared) base layer is gone.
make_empty() {
	remove_images
	"$DOCKER" image inspect "${ID[big]}" >/dev/null 2>&1 && die "image ${ID[big]} still in dockerd after rmi -f"
	"$DOCKER" image inspect "${ID[next]}" >/dev/null 2>&1 && die "image ${ID[next]} still in dockerd after rmi -f"
	[[ -n $LAYERDB ]] || return 0
	local -a c
	read -ra c <<<"${CHAINS[next]}"
	if [[ $(layers_present "${c[@]:1}") != 0 ]]; then
		log "layers of the benchmark image are still in dockerd after rmi -f; docker image prune -f"
		"$DOCKER" image prune -f >/dev/null
		[[ $(layers_present "${c[@]:1}") == 0 ]] || die "layers still in dockerd after rmi -f and image prune -f: ${c[*]:1}"
	fi
}

# :big in dockerd (loaded untimed through berth's proxy), :next's new layer not.
make_base() {
	make_empty
	load_berth proxy "$BIG" "${ID[big]}" >/dev/null
	if [[ -n $LAYERDB ]]; then
		local -a c
		read -ra c <<<"${CHAINS[next]}"
		[[ $(layers_present "${c[@]:0:${#c[@]}-1}") == $((${#c[@]} - 1)) ]] || die ":big's layers are not all in dockerd"
		[[ $(layers_present "${c[-1]}") == 0 ]] || die ":next's new layer is already in dockerd"
	fi
}

# --- loads ---------------------------------------------------------------------------

# load_berth proxy|tar NAME ID: run berth load, check the path and the ID; prints secs.
load_berth() {
	local how=$1 name=$2 id=$3 args=() t0 t1 out=$work/logs/load.out err=$work/logs/load.err
	[[ $how == tar ]] && args=(--no-registry-proxy)
	t0=$(now)
	berth load "${args[@]}" "$name" >"$out" 2>"$err" || { cat "$err" >&2; die "berth load ${args[*]} $name"; }
	t1=$(now)
	[[ $(cat "$out") == "$id" ]] || die "berth load $name printed '$(cat "$out")', want $id"
	if [[ $how == proxy ]]; then
		grep -q "through berth's registry proxy" "$err" || { cat "$err" >&2; die "berth load $name did not go through the registry proxy"; }
	else
		grep -q "as a tar stream" "$err" || { cat "$err" >&2; die "berth load --no-registry-proxy $name did not stream a tar"; }
	fi
	elapsed "$t0" "$t1"
}

load_peer() { # archive name id; prints secs
	local t0 t1 out
	t0=$(now)
	out=$("$DOCKER" load -i "$1" 2>&1) || die "docker load -i $1: $out"
	t1=$(now)
	grep -q "Loaded image: $2" <<<"$out" || die "docker load -i $1: '$out', want 'Loaded image: $2'"
	[[ $("$DOCKER" image inspect --format '{{.Id}}' "$2") == "$3" ]] || die "docker load -i $1: $2 is not $3"
	elapsed "$t0" "$t1"
}

run_image() { # name
	local out
	out=$("$DOCKER" run --rm "$1" true 2>&1) || die "docker run --rm $1 true: $out"
}

settle() { sync; sleep "$SETTLE"; }

# measure CASE: one timed attempt; appends to T[CASE/load] and T[CASE/run].
measure() {
	local c=$1 t0 l tm t1
	case $c in
	proxy | tar | peer) make_empty ;;
	reload-berth | reload-peer) make_base ;;
	esac
	settle
	t0=$(now)
	case $c in
	proxy) l=$(load_berth proxy "$BIG" "${ID[big]}"); tm=$(now); run_image "$BIG" ;;
	tar) l=$(load_berth tar "$BIG" "${ID[big]}"); tm=$(now); run_image "$BIG" ;;
	peer) l=$(load_peer "$work/big.docker.tar" "$PEER_BIG" "${ID[big]}"); tm=$(now); run_image "$PEER_BIG" ;;
	reload-berth) l=$(load_berth proxy "$NEXT" "${ID[next]}"); tm=$(now); run_image "$NEXT" ;;
	reload-peer) l=$(load_peer "$work/next.docker.tar" "$PEER_NEXT" "${ID[next]}"); tm=$(now); run_image "$PEER_NEXT" ;;
	esac
	t1=$(now)
	ALLRUN+=" $(elapsed "$tm" "$t1")"
	T[$c/load]+=" $l"
	T[$c/run]+=" $(elapsed "$t0" "$t1")"
	log "$c: load $l s, load + run $(elapsed "$t0" "$t1") s"
}

# The contents really arrived (untimed, once per path).
check_contents() { # name
	local out want=$((PART_MIB * 1024 * 1024)) i
	out=$("$DOCKER" run --rm "$1" ls -ln /data) || die "docker run $1 ls"
	for ((i = 1; i <= PARTS; i++)); do
		awk -v f="part$i" -v s="$want" '$NF == f && $5 == s { ok = 1 } END { exit !ok }' <<<"$out" ||
			die "$1: /data/part$i is not $want bytes: $out"
	done
}

CASES=(proxy tar peer reload-berth reload-peer)
log "measuring: $REPS rounds of ${CASES[*]}"
for ((r = 1; r <= REPS; r++)); do
	for c in "${CASES[@]}"; do
		measure "$c"
		if ((r == 1)); then
			case $c in
			proxy | tar) check_contents "$BIG" ;;
			peer) check_contents "$PEER_BIG" ;;
			reload-berth) check_contents "$NEXT" ;;
			reload-peer) check_contents "$PEER_NEXT" ;;
			esac
		fi
	done
done
for k in "${!T[@]}"; do
	# shellcheck disable=SC2086 # word-split the list of times
	MED[$k]=$(median ${T[$k]})
done

# --- report ------------------------------------------------------------------------

print_table() {
	# case | label | peer case | target
	local rows=(
		"proxy|berth load (registry proxy)|peer|1.0"
		"tar|berth load --no-registry-proxy (tar)|peer|1.0"
		"peer|docker load -i (skopeo docker-archive)|peer|"
		"reload-berth|re-load :next, berth load (proxy)|reload-peer|0.3"
		"reload-peer|re-load :next, docker load -i|reload-peer|"
	)
	local row c label p target r rl verdict
	echo
	printf '%-40s | %8s | %10s | %9s | %9s | %7s | %s\n' case "load s" "runnable s" "ratio run" "ratio load" target "verdict (runnable; load only)"
	printf '%s\n' "-----------------------------------------+----------+------------+-----------+------------+---------+------------------------------"
	for row in "${rows[@]}"; do
		IFS='|' read -r c label p target <<<"$row"
		if [[ -z $target ]]; then
			printf '%-40s | %8s | %10s | %9s | %10s | %7s | %s\n' "$label" "${MED[$c/load]}" "${MED[$c/run]}" "1.00x" "1.00x" "" "(reference)"
			continue
		fi
		r=$(ratio "${MED[$c/run]}" "${MED[$p/run]}")
		rl=$(ratio "${MED[$c/load]}" "${MED[$p/load]}")
		verdict=$(awk -v r="$r" -v l="$rl" -v t="$target" 'BEGIN { print ((r <= t) ? "ok" : "below target") "; load only " ((l <= t) ? "ok" : "below target") }')
		printf '%-40s | %8s | %10s | %9s | %10s | %7s | %s\n' "$label" "${MED[$c/load]}" "${MED[$c/run]}" "${r}x" "${rl}x" "<=${target}x" "$verdict"
	done
	echo
	echo "median of $REPS; runnable = the load command + 'docker run --rm IMAGE true', timed together;"
	echo "ratio run = berth's runnable time / docker load's (the verdict); ratio load = the same for the load"
	echo "command alone (lower is better). 'docker run --rm IMAGE true' alone took $(median ${ALLRUN}) s (median of all)."
	echo "image: busybox + $PARTS x $PART_MIB MiB $DATA; berth's layers $((size_big / 1000000)) MB gzip, the peer's archive"
	echo "$(($(stat -c %s "$work/big.docker.tar") / 1000000)) MB (skopeo docker-archive, uncompressed layers). Every attempt starts after the"
	echo "images were removed from dockerd (layers checked gone in $DOCKER_DRIVER's layerdb), sync and ${SETTLE} s."
	echo "all attempts (load / runnable, s):"
	for c in "${CASES[@]}"; do
		printf '  %-13s load%s | runnable%s\n' "$c" "${T[$c/load]}" "${T[$c/run]}"
	done
	echo "dockerd $("$DOCKER" version --format '{{.Server.Version}}'), $DOCKER_DRIVER; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}
print_table

[[ $DIAG == 1 ]] || exit 0

# --- diagnostics: where the time goes ---------------------------------------------------

echo
echo "== diagnostics (not part of the table)"

# Fixed cost: the image is already in dockerd; nothing but the pre-flight, manifest, config.
make_empty
load_berth proxy "$BIG" "${ID[big]}" >/dev/null
fixed=()
for ((r = 0; r < 3; r++)); do fixed+=("$(load_berth proxy "$BIG" "${ID[big]}")"); done
fixed_tar=$(load_berth tar "$BIG" "${ID[big]}")
echo "berth load of an image dockerd already has: proxy ${fixed[*]} s (fixed cost); tar $fixed_tar s (the tar is sent whole anyway)"

# The proxy's request log, offsets from the start of `berth load`.
make_empty
settle
t0=$(now)
BERTH_LOG=info "$BERTH" --root "$ROOT" --config "$work/berth.toml" load "$BIG" >/dev/null 2>"$work/logs/info.err" ||
	{ cat "$work/logs/info.err" >&2; die "berth load with BERTH_LOG=info"; }
t1=$(now)
echo
echo "one proxy load with BERTH_LOG=info: $(elapsed "$t0" "$t1") s; the proxy's log (offset s from the start of berth load;"
echo "ms = the registry's time to the response head, not the whole body):"
while IFS= read -r line; do
	ts=${line%% *}
	if [[ $ts =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]]; then
		off=$(elapsed "$t0" "$(date -d "$ts" +%s.%N)")
		rest=${line#* }
		rest=${rest/path=\"\/v2\//\"}
		printf '  %7s  %s\n' "$off" "$(sed -E 's/sha256:([0-9a-f]{12})[0-9a-f]*/sha256:\1/g; s/ +/ /g' <<<"$rest")"
	else
		printf '  %7s  %s\n' "$(elapsed "$t0" "$t1")" "$line"
	fi
done <"$work/logs/info.err"

# docker pull with the progress lines timestamped: when each layer finished downloading
# ("Download complete") and when it was extracted ("Pull complete").
pulls=0
timed_pull() { # reference label
	local t0 line off total r logf tot=() dl=() ex=() last_dl last_pull
	for ((r = 0; r < DIAG_REPS; r++)); do
		make_empty
		"$DOCKER" rmi -f "$1" >/dev/null 2>&1 || true
		settle
		pulls=$((pulls + 1))
		logf=$work/logs/pull-$pulls.log
		echo "# docker pull $1" >"$logf"
		last_dl=- last_pull=-
		t0=$(now)
		while IFS= read -r line; do
			off=$(elapsed "$t0" "$(now)")
			case $line in
			*"Download complete"*) last_dl=$off ;;
			*"Pull complete"*) last_pull=$off ;;
			esac
			echo "$off $line" >>"$logf"
		done < <("$DOCKER" pull "$1" 2>&1 || echo "PULL FAILED")
		total=$(elapsed "$t0" "$(now)")
		grep -q "PULL FAILED" "$logf" && { cat "$logf" >&2; die "docker pull $1"; }
		[[ $("$DOCKER" image inspect --format '{{.Id}}' "$1") == "${ID[big]}" ]] || die "docker pull $1: not ${ID[big]}"
		tot+=("$total") dl+=("$last_dl") ex+=("$last_pull")
	done
	printf '  %-40s total %s s; downloads done at %s s; last layer extracted at %s s\n' "$2" \
		"$(IFS=/; echo "${tot[*]}")" "$(IFS=/; echo "${dl[*]}")" "$(IFS=/; echo "${ex[*]}")"
	"$DOCKER" rmi -f "$1" >/dev/null 2>&1 || true
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { # url pid
	local i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$2" 2>/dev/null || die "registry on $1 exited"
		curl -s -o /dev/null --noproxy '*' "$1/v2/" && return 0
		sleep 0.1
	done
	die "no registry on $1"
}

# push_variant HOST REPO LAYER_MEDIA_TYPE FILE...: :big's config and base layer from
# berth's store plus FILE... as the other layers, pushed with curl as REPO:big.
push_variant() {
	local host=$1 name=$2 mt=$3 f d loc code layers cfg=${ID[big]} base=${big_layers[0]}
	shift 3
	up() { # file digest
		loc=$(curl -sS --noproxy '*' -o /dev/null -X POST -w '%header{location}' "http://$host/v2/$name/blobs/uploads/") ||
			die "POST upload to $host"
		[[ $loc == /* ]] && loc=http://$host$loc
		[[ $loc == *\?* ]] && loc+="&digest=$2" || loc+="?digest=$2"
		code=$(curl -sS --noproxy '*' -o /dev/null -H 'Expect:' -T "$1" -w '%{http_code}' "$loc") || die "PUT $2 to $host"
		[[ $code == 201 ]] || die "PUT $2 to $host: $code"
	}
	up "$ROOT/blobs/sha256/${cfg#sha256:}" "$cfg"
	up "$ROOT/blobs/sha256/${base#sha256:}" "$base"
	layers=$(printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}' "$base" "$(stat -c %s "$ROOT/blobs/sha256/${base#sha256:}")")
	for f in "$@"; do
		d=sha256:$(sha256sum "$f" | cut -d' ' -f1)
		up "$f" "$d"
		layers+=$(printf ',{"mediaType":"%s","digest":"%s","size":%s}' "$mt" "$d" "$(stat -c %s "$f")")
	done
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
		"$cfg" "$(stat -c %s "$ROOT/blobs/sha256/${cfg#sha256:}")" "$layers" >"$work/variant-manifest.json"
	code=$(curl -sS --noproxy '*' -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
		--data-binary @"$work/variant-manifest.json" -w '%{http_code}' "http://$host/v2/$name/manifests/big") || die "PUT manifest $name"
	[[ $code == 201 ]] || die "PUT manifest $name to $host: $code"
}

echo
echo "docker pull of the same image (the same config: the same image ID), $DIAG_REPS attempts each (a/b),"
echo "from the progress lines: when the last layer finished downloading and when the last was extracted:"
bport=$(free_port)
"$BERTH" registry serve --read-only --no-delete --addr "127.0.0.1:$bport" --root "$ROOT" --config "$work/berth.toml" \
	>"$work/logs/serve.out" 2>"$work/logs/serve.err" &
PIDS+=($!)
wait_up "http://127.0.0.1:$bport" "${PIDS[-1]}"
timed_pull "127.0.0.1:$bport/${BIG%%:*}@${MANIFEST_DIGEST[big]}" "from berth registry serve"

if command -v docker-registry >/dev/null; then
	dport=$(free_port)
	mkdir -p "$work/dist"
	cat >"$work/dist/config.yml" <<-EOF
		version: 0.1
		log:
		  level: warn
		  accesslog:
		    disabled: true
		storage:
		  filesystem:
		    rootdirectory: $work/dist/root
		http:
		  addr: 127.0.0.1:$dport
	EOF
	docker-registry serve "$work/dist/config.yml" >"$work/logs/dist.out" 2>&1 &
	PIDS+=($!)
	wait_up "http://127.0.0.1:$dport" "${PIDS[-1]}"
	# From berth's registry to distribution: the blobs stay byte for byte the same.
	skopeo copy -q --src-tls-verify=false --dest-tls-verify=false \
		"docker://127.0.0.1:$bport/${BIG%%:*}@${MANIFEST_DIGEST[big]}" "docker://127.0.0.1:$dport/bench/gzip:big" ||
		die "skopeo copy to distribution"
	timed_pull "127.0.0.1:$dport/bench/gzip:big" "from distribution (gzip layers)"
	# The same image with the big layers re-encoded: uncompressed tars (digest = diff_id)
	# and `gzip -1` (which, unlike berth's zlib-rs level 1, stores incompressible data
	# in stored blocks). Same config, so the same image ID.
	mkdir -p "$work/variants"
	plain=() stored=()
	for l in "${big_layers[@]:1}"; do
		gunzip -c "$ROOT/blobs/sha256/${l#sha256:}" >"$work/variants/${l#sha256:}.tar"
		gzip -1 -n -c "$work/variants/${l#sha256:}.tar" >"$work/variants/${l#sha256:}.tar.gz"
		plain+=("$work/variants/${l#sha256:}.tar")
		stored+=("$work/variants/${l#sha256:}.tar.gz")
	done
	push_variant "127.0.0.1:$dport" bench/plain application/vnd.oci.image.layer.v1.tar "${plain[@]}"
	timed_pull "127.0.0.1:$dport/bench/plain:big" "from distribution (uncompressed layers)"
	push_variant "127.0.0.1:$dport" bench/stored application/vnd.oci.image.layer.v1.tar+gzip "${stored[@]}"
	timed_pull "127.0.0.1:$dport/bench/stored:big" "from distribution (gzip -1 layers)"
	echo "  (layer bytes: berth's gzip $((size_big / 1000000)) MB, gzip -1 $(($(cat "${stored[@]}" | wc -c) / 1000000)) MB, uncompressed $(($(cat "${plain[@]}" | wc -c) / 1000000)) MB)"
	t0=$(now)
	for f in "${stored[@]}"; do gunzip -c "$f" >/dev/null; done
	gunzip_stored=$(elapsed "$t0" "$(now)")
	rm -rf "$work/variants"
else
	echo "  (docker-registry not installed: no distribution comparison)"
fi

# berth's tar path is a docker-archive of the store's gzip blobs; the same archive made
# by hand and given to `docker load -i` tells berth's streaming from the daemon's work.
mkdir -p "$work/gzarch"
cp "$ROOT/blobs/sha256/${ID[big]#sha256:}" "$work/gzarch/${ID[big]#sha256:}.json"
gzlayers=()
for l in "${big_layers[@]}"; do
	ln -s "$ROOT/blobs/sha256/${l#sha256:}" "$work/gzarch/${l#sha256:}.tar.gz"
	gzlayers+=("\"${l#sha256:}.tar.gz\"")
done
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":[%s]}]' "${ID[big]#sha256:}" "$PEER_BIG" \
	"$(IFS=,; echo "${gzlayers[*]}")" >"$work/gzarch/manifest.json"
tar -C "$work/gzarch" -chf "$work/big.gzip-docker.tar" .
rm -rf "$work/gzarch"
echo
gzt=()
for ((r = 0; r < DIAG_REPS; r++)); do
	make_empty
	settle
	gzt+=("$(load_peer "$work/big.gzip-docker.tar" "$PEER_BIG" "${ID[big]}")")
done
echo "docker load -i of a docker-archive holding berth's gzip blobs as its layers (what the tar path streams): ${gzt[*]} s"
rm -f "$work/big.gzip-docker.tar"

echo
echo "pieces, no dockerd involved (page cache warm):"
t0=$(now)
for l in "${big_layers[@]:1}"; do
	curl -s --noproxy '*' -o /dev/null "http://127.0.0.1:$bport/v2/${BIG%%:*}/blobs/$l" || die "curl blob $l"
done
echo "  GET the $((${#big_layers[@]} - 1)) big blobs from berth registry serve, one after another: $(elapsed "$t0" "$(now)") s"
t0=$(now)
for l in "${big_layers[@]:1}"; do gunzip -c "$ROOT/blobs/sha256/${l#sha256:}" >/dev/null; done
echo "  gunzip -c of them (zlib, one core): $(elapsed "$t0" "$(now)") s${gunzip_stored:+; of their gzip -1 re-encodings: $gunzip_stored s}"
t0=$(now)
for l in "${big_layers[@]:1}"; do sha256sum "$ROOT/blobs/sha256/${l#sha256:}" >/dev/null; done
echo "  sha256sum of them: $(elapsed "$t0" "$(now)") s"
t0=$(now)
cat "$work/big.docker.tar" >/dev/null
echo "  cat big.docker.tar: $(elapsed "$t0" "$(now)") s"
