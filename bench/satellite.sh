#!/usr/bin/env bash
# Benchmark remote builds: `berth build --satellite` against a local `berth build` and
# against `docker build` talking to a remote dockerd over TLS (DOCKER_HOST=tcp://…:2376,
# the way Kamal and Komodo users build remotely), side by side in one run.
#
# Two network namespaces joined by a veth pair stand for two machines:
#   A  10.78.0.1  the client: `berth build` (local and --satellite) and the docker client
#   B  10.78.0.2  the builder: `berth satellite serve` (port 8372, berth's own mutual TLS)
#                 and a second dockerd (its own --data-root, --exec-root, pidfile and unix
#                 socket, TCP 2376 with --tlsverify and certificates made here with openssl)
# Namespaces are entered with `nsenter --net` only (runc needs the host's cgroup mounts).
# Both share this machine's disks and 2 cores: what the veth pair adds is the network hop,
# TLS and the context transfer, which is what this measures. The satellite reads the
# base from the same OCI layout path the client names (oci-layout:// is resolved on the
# builder); dockerd gets the same image by `docker load` of a docker-archive on host B
# (its unix socket), timed as part of its cold build, untimed before the other scenarios.
#
# Projects: bench/build.sh's (small: busybox; large: Debian + gcc, ~3000 files, one RUN
# compiles 500; generated through bench/common.sh). Scenarios, per project:
#   cold    nothing in: local berth in a new --root; the satellite restarted on a new
#           root with a new client root (client's checksum cache empty, whole context
#           uploaded); remote dockerd after `docker builder prune -af` and `docker rmi` of
#           the base, its time = `docker load` of the base on host B + the build
#           (min of COLD_REPS, each from new roots, ~30 s after the deletions)
#   cold, base in   berth in new roots where an untimed warm-up build (FROM base; RUN true)
#           imported and unpacked the base; docker's figure is the build part of its cold
#           run, after its `docker load` (min of COLD_REPS)
#   no-op   the same build again                                   (min of NOOP_REPS)
#   change  one source file changed (new content each run)
#           (min of CHANGE_REPS for small, LARGE_CHANGE_REPS for large)
# Each measurement is the wall time of the client command (`date +%s.%N` around it);
# local, remote and docker take turns at every measurement. It prints a table with
# remote/local and remote/docker and the issue's targets beside them (not asserted):
# remote no-op within 50 ms of local no-op; one-file change on large within 1.2x of
# local; cold within 1.1x of local; every remote scenario faster than remote docker.
# Then per reported run: step timings from --progress plain, and for remote berth the
# upload summary and where the time outside the steps went.
#
# Usage: bench/satellite.sh          (as root: runc, overlayfs, netns, a second dockerd)
#   BERTH_BIN=path       use this berth instead of `cargo build --release -p berth-cli`
#   PROJECTS="small large"   which projects to run
#   COLD_REPS=2 NOOP_REPS=5 CHANGE_REPS=2 LARGE_CHANGE_REPS=3   runs (the minimum is reported)
#   LARGE_MODULES=30 LARGE_FILES=100 LARGE_BUILT=5   shape of the large context
#   CACHE=/var/tmp/berth-bench   debootstrap rootfs and Debian OCI layout (shared with
#                        bench/build.sh; the first run fetches from Debian's mirror)
#   KEEP_LOGS=dir        copy every build log (and the daemons' logs) there
#   STORE_DIR=/var/lib   where berth's roots and the second dockerd's data go
#   SETTLE=1             wait ~6 min after the cold-state deletions (0: don't;
#                        SETTLE_SECS=N: N s; see settle in common.sh)
#   NET=10.78.0          the /24 the veth pair uses
#
# Needs: iproute2, nsenter, openssl, docker.io 20.10 (dockerd and /usr/bin/docker),
# skopeo, busybox-static, runc, debootstrap (large). The main dockerd is not used.
# On exit (trap), whatever happens: the satellite and the second dockerd are stopped,
# the namespaces deleted, every mount and directory it made removed.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

CACHE=${CACHE:-/var/tmp/berth-bench}
PROJECTS=${PROJECTS:-small large}
COLD_REPS=${COLD_REPS:-2}
NOOP_REPS=${NOOP_REPS:-5}
CHANGE_REPS=${CHANGE_REPS:-2}
LARGE_CHANGE_REPS=${LARGE_CHANGE_REPS:-3}
LARGE_MODULES=${LARGE_MODULES:-30}
LARGE_FILES=${LARGE_FILES:-100}
LARGE_BUILT=${LARGE_BUILT:-5}
NET=${NET:-10.78.0}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=/usr/bin/docker
SAT_PORT=8372
DOCKER_PORT=2376
BB_TAG=1.35
DEB_TAG=bookworm
D_PREFIX=berth-satbench
A_ADDR=$NET.1 B_ADDR=$NET.2
NS_A=berth-satbench-$$-a NS_B=berth-satbench-$$-b

TOOLS="local remote docker"
SCENARIOS=(cold coldbase noop change)
declare -A T        # T[project/scenario/tool] = seconds (the best run)
declare -A TIMES    # every run's seconds
declare -A RESULT   # RESULT[project/scenario/rep/tool] = BENCH_RESULT
declare -A LOGOF    # the best run's log
declare -A CHANGED
declare -a WARN=()

# log die now elapsed min, project generation, step_times, netns helpers, settle
. "$here/common.sh"

work= stores= run_dir= sat_pid= dockerd_started= ns_made=
stop_satellite() {
	[[ -n ${sat_pid:-} ]] || return 0
	kill "$sat_pid" 2>/dev/null || true
	local i
	for ((i = 0; i < 100; i++)); do kill -0 "$sat_pid" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$sat_pid" 2>/dev/null || true
	wait "$sat_pid" 2>/dev/null || true
	sat_pid=
}
stop_dockerd() {
	[[ -n ${dockerd_started:-} ]] || return 0
	dockerd_started=
	kill "$dockerd_pid" 2>/dev/null || true
	local i
	for ((i = 0; i < 300; i++)); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$dockerd_pid" 2>/dev/null || true
	wait "$dockerd_pid" 2>/dev/null || true
	# Its supervised containerd normally goes with it; by its pid file if not.
	local cpid
	cpid=$(cat "$run_dir/exec/containerd/containerd.pid" 2>/dev/null || true)
	if [[ -n $cpid ]] && kill -0 "$cpid" 2>/dev/null; then
		kill "$cpid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$cpid" 2>/dev/null || true
	fi
}
cleanup() {
	local rc=$?
	set +e
	stop_satellite
	stop_dockerd
	if [[ -n $ns_made ]]; then
		ip netns delete "$NS_A" 2>/dev/null
		ip netns delete "$NS_B" 2>/dev/null
	fi
	if [[ -n $work && -d $work && -n ${KEEP_LOGS:-} ]]; then
		mkdir -p "$KEEP_LOGS" && cp -r "$work/logs/." "$KEEP_LOGS/" 2>/dev/null
	fi
	remove_trees "$stores" "$run_dir" "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || die "run as root (runc, network namespaces, dockerd)"
for t in ip nsenter openssl skopeo dockerd runc; do
	command -v "$t" >/dev/null || die "$t is not installed"
done
[[ -x $DOCKER ]] || die "$DOCKER (Debian's docker.io client) is not installed"

work=$(mktemp -d /tmp/berth-bench-satellite.XXXXXX)
mkdir -p "$work/logs"
# Roots and dockerd's data beside the main dockerd's (/var/lib), not in /tmp (see
# bench/build.sh). Sockets and the exec root: short paths under /run.
stores=$(mktemp -d "${STORE_DIR:-/var/lib}/berth-satbench.XXXXXX")
chattr +T "$stores" 2>/dev/null || true
run_dir=$(mktemp -d /run/berth-satbench.XXXXXX)

# --- berth -------------------------------------------------------------------

private_berth
BERTH=$work/berth
"$BERTH" satellite --help >/dev/null || die "$BERTH has no satellite command"

# --- the two hosts -----------------------------------------------------------

ns_made=1
netns_add "$NS_A"
netns_add "$NS_B"
veth_link "$NS_A" "$A_ADDR/24" "$NS_B" "$B_ADDR/24" "bsb$(($$ % 100000))"

# --- the satellite (host B) --------------------------------------------------

# start_satellite ROOT: a satellite on a new ROOT in B, this client (CFG, CROOT) enrolled.
sat_n=0
start_satellite() {
	stop_satellite
	sat_n=$((sat_n + 1))
	SAT_ROOT=$1
	CFG=$work/client-config-$sat_n
	local out=$work/logs/satellite-$sat_n.out
	# nsenter itself (not in_ns, a function): $! is then the satellite's pid.
	nsenter --net="/run/netns/$NS_B" -- "$BERTH" --root "$SAT_ROOT" satellite serve --addr "$B_ADDR:$SAT_PORT" \
		--name bench --advertise "$B_ADDR" >"$out" 2>"$work/logs/satellite-$sat_n.log" &
	sat_pid=$!
	local i
	for ((i = 0; i < 300; i++)); do
		grep -q 'listening on' "$out" 2>/dev/null && break
		kill -0 "$sat_pid" 2>/dev/null || { cat "$work/logs/satellite-$sat_n.log" >&2; die "the satellite exited"; }
		sleep 0.1
	done
	grep -q 'listening on' "$out" || die "the satellite did not start in 30 s"
	local token
	token=$("$BERTH" --root "$SAT_ROOT" satellite token create) || die "berth satellite token create"
	XDG_CONFIG_HOME=$CFG in_ns "$NS_A" "$BERTH" --root "$work/enroll-root" \
		satellite add bench --token "$token" --client-name bench >/dev/null 2>"$work/logs/enroll-$sat_n.log" ||
		{ cat "$work/logs/enroll-$sat_n.log" >&2; die "berth satellite add"; }
}

# --- a second dockerd (host B), TLS on tcp://B:2376 ---------------------------

certs=$work/certs
mkdir -p "$certs/client"
(
	cd "$certs"
	openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
	openssl req -x509 -new -key ca-key.pem -sha256 -days 2 -subj "/CN=berth satbench CA" -out ca.pem
	openssl ecparam -name prime256v1 -genkey -noout -out server-key.pem
	openssl req -new -key server-key.pem -subj "/CN=$B_ADDR" -out server.csr
	printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$B_ADDR" > server.ext
	openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
		-sha256 -extfile server.ext -out server-cert.pem
	openssl ecparam -name prime256v1 -genkey -noout -out client/key.pem
	openssl req -new -key client/key.pem -subj "/CN=satbench client" -out client.csr
	printf 'extendedKeyUsage=clientAuth\n' > client.ext
	openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
		-sha256 -extfile client.ext -out client/cert.pem
	cp ca.pem client/ca.pem
) >"$work/logs/openssl.log" 2>&1 || { cat "$work/logs/openssl.log" >&2; die "making the TLS certificates with openssl"; }

dockerd_pidfile=$run_dir/docker.pid
printf '{}\n' > "$work/daemon.json"
dockerd_started=1
nsenter --net="/run/netns/$NS_B" -- dockerd --config-file "$work/daemon.json" \
	--data-root "$stores/dockerd" --exec-root "$run_dir/exec" --pidfile "$dockerd_pidfile" \
	-H "unix://$run_dir/docker.sock" -H "tcp://$B_ADDR:$DOCKER_PORT" \
	--tlsverify --tlscacert "$certs/ca.pem" --tlscert "$certs/server-cert.pem" --tlskey "$certs/server-key.pem" \
	>"$work/logs/dockerd.log" 2>&1 &
dockerd_pid=$!
# rdocker ARGS: the docker client on host A, talking to B's dockerd over TLS.
rdocker() {
	DOCKER_HOST=tcp://$B_ADDR:$DOCKER_PORT DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$certs/client \
		DOCKER_BUILDKIT=1 in_ns "$NS_A" "$DOCKER" "$@"
}
for ((i = 0; i < 300; i++)); do
	rdocker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
	kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 30 "$work/logs/dockerd.log" >&2; die "the second dockerd exited"; }
	sleep 0.2
done
rdocker version --format '{{.Server.Version}}' >/dev/null 2>"$work/logs/docker-version.err" ||
	{ cat "$work/logs/docker-version.err" >&2; tail -n 30 "$work/logs/dockerd.log" >&2; die "the second dockerd does not answer on tcp://$B_ADDR:$DOCKER_PORT"; }
log "dockerd $(rdocker version --format '{{.Server.Version}}') in $NS_B on tcp://$B_ADDR:$DOCKER_PORT (TLS)"

# --- base images -------------------------------------------------------------

bb_layout=$work/busybox-layout
"$repo/scripts/make-busybox-layout" "$bb_layout" "$BB_TAG" >/dev/null
declare -A LAYOUT TAG DNAME
LAYOUT[small]=$bb_layout TAG[small]=$BB_TAG DNAME[small]=$D_PREFIX/busybox:$BB_TAG
LAYOUT[large]=$CACHE/debian-layout TAG[large]=$DEB_TAG DNAME[large]=$D_PREFIX/debian:$DEB_TAG

base_ref() { # tool project
	case $1 in
	local | remote) echo "oci-layout://${LAYOUT[$2]}:${TAG[$2]}" ;;
	docker) echo "${DNAME[$2]}" ;;
	esac
}

# The base into the remote dockerd, as a docker-archive made by skopeo (untimed).
# ldocker ARGS: the docker client on host B itself, through the second dockerd's unix socket.
ldocker() { DOCKER_HOST=unix://$run_dir/docker.sock in_ns "$NS_B" "$DOCKER" "$@"; }

# docker_load_base PROJECT: `docker load` of the base on host B (a docker-archive made once,
# untimed, from the same OCI layout berth reads). Prints the load's wall time.
docker_load_base() {
	local p=$1 tar=$work/base-$1.tar t0
	if [[ ! -f $tar ]]; then
		skopeo copy -q "oci:${LAYOUT[$p]}:${TAG[$p]}" "docker-archive:$tar:${DNAME[$p]}" \
			>"$work/logs/skopeo-$p.log" 2>&1 || { cat "$work/logs/skopeo-$p.log" >&2; die "skopeo copy to a docker-archive ($p)"; }
	fi
	t0=$(now)
	ldocker load -q -i "$tar" >"$work/logs/docker-load-$p.log" 2>&1 ||
		{ cat "$work/logs/docker-load-$p.log" >&2; die "docker load into the second dockerd ($p)"; }
	elapsed "$t0" "$(now)"
}

# --- builds ------------------------------------------------------------------

declare -A LROOT CROOT
# build TOOL PROJECT LOG: one build, its wall time on stdout. Dies if it fails.
build() {
	local tool=$1 p=$2 logf=$3 ctx=$work/ctx-$2 base t0 t1 rc=0
	base=$(base_ref "$tool" "$p")
	t0=$(now)
	case $tool in
	local)
		XDG_CONFIG_HOME=$work/no-config in_ns "$NS_A" "$BERTH" --root "${LROOT[$p]}" build --no-satellite \
			--progress plain -f "$ctx/Dockerfile" -t "bench-$p:latest" --build-arg "BASE=$base" "$ctx" \
			>"$logf" 2>&1 || rc=$?
		;;
	remote)
		XDG_CONFIG_HOME=$CFG in_ns "$NS_A" "$BERTH" --root "${CROOT[$p]}" build --satellite bench \
			--progress plain -f "$ctx/Dockerfile" -t "bench-$p:latest" --build-arg "BASE=$base" "$ctx" \
			>"$logf" 2>&1 || rc=$?
		;;
	docker)
		rdocker build --progress plain -f "$ctx/Dockerfile" -t "$D_PREFIX/out-$p:latest" \
			--build-arg "BASE=$base" "$ctx" >"$logf" 2>&1 || rc=$?
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

# measure PROJECT SCENARIO REP TOOL: one timed build, recorded.
measure() {
	local p=$1 s=$2 r=$3 tool=$4 logf t res load
	logf=$work/logs/$p-$s$r-$tool.log
	if [[ $s == cold && $tool == docker ]]; then
		load=$(docker_load_base "$p")
		t=$(build "$tool" "$p" "$logf")
		# The build alone is docker's "base in" figure.
		record "$p" coldbase "$t" "$logf" docker
		t=$(awk -v a="$load" -v b="$t" 'BEGIN { printf "%.3f", a + b }')
	else
		t=$(build "$tool" "$p" "$logf")
	fi
	res=$(bench_result "$logf")
	case $s in
	noop) [[ -z $res ]] || WARN+=("$p no-op $r: $tool re-ran steps (see its log)") ;;
	*) RESULT[$p/$s/$r/$tool]=$res ;;
	esac
	record "$p" "$s" "$t" "$logf" "$tool"
}

# record PROJECT SCENARIO SECONDS LOG TOOL: keep the minimum and every time.
record() {
	local p=$1 s=$2 t=$3 logf=$4 tool=$5
	if [[ -z ${T[$p/$s/$tool]:-} ]] || awk -v a="$t" -v b="${T[$p/$s/$tool]}" 'BEGIN { exit !(a < b) }'; then
		T[$p/$s/$tool]=$t LOGOF[$p/$s/$tool]=$logf
	fi
	TIMES[$p/$s/$tool]+="$t "
}

# warm_up TOOL PROJECT: an untimed FROM base; RUN true, which imports and unpacks the base.
warm_up() {
	local tool=$1 p=$2 logf=$work/logs/$2-warmup-$1.log base
	base=$(base_ref "$tool" "$p")
	mkdir -p "$work/warmup"
	printf 'ARG BASE\nFROM ${BASE}\nRUN true\n' > "$work/warmup/Dockerfile"
	case $tool in
	local)
		XDG_CONFIG_HOME=$work/no-config in_ns "$NS_A" "$BERTH" --root "${LROOT[$p]}" build --no-satellite \
			--progress plain --build-arg "BASE=$base" "$work/warmup" >"$logf" 2>&1
		;;
	remote)
		XDG_CONFIG_HOME=$CFG in_ns "$NS_A" "$BERTH" --root "$work/warmup-client-root" build --satellite bench \
			--progress plain --build-arg "BASE=$base" "$work/warmup" >"$logf" 2>&1
		;;
	esac || { tail -n 40 "$logf" >&2; die "$tool warm-up build of $p failed"; }
}

last_delete=0
# make_cold PROJECT REP: empty caches for all three (untimed).
make_cold() {
	local p=$1 r=$2 imgs
	LROOT[$p]=$stores/local-$p-cold$r
	CROOT[$p]=$stores/client-$p-cold$r
	start_satellite "$stores/sat-$p-cold$r"
	imgs=$(rdocker images --format '{{.Repository}}:{{.Tag}}' | grep "^$D_PREFIX/out-" || true)
	[[ -z $imgs ]] || rdocker rmi -f $imgs >/dev/null
	rdocker builder prune -af >/dev/null
	rdocker rmi -f "${DNAME[$p]}" >/dev/null 2>&1 || true
	last_delete=$(now)
}

run_project() {
	local p=$1 r tool reps
	set_source "$p" 0
	for ((r = 1; r <= COLD_REPS; r++)); do
		make_cold "$p" "$r"
		settle
		for tool in $TOOLS; do measure "$p" cold "$r" "$tool"; done
	done
	# Cold again with the base already in: new roots (and a new satellite) where an
	# untimed warm-up build unpacked it, as `docker load` did for docker's cold build.
	# The last of these roots go on to the no-op and change runs.
	for ((r = 1; r <= COLD_REPS; r++)); do
		LROOT[$p]=$stores/local-$p-$r
		CROOT[$p]=$stores/client-$p-$r
		start_satellite "$stores/sat-$p-$r"
		warm_up local "$p"
		warm_up remote "$p"
		measure "$p" coldbase "$r" local
		measure "$p" coldbase "$r" remote
	done
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
	local s
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
	[[ $p == small || $p == large ]] || die "unknown project $p (small, large)"
	prepare_project "$p"
	log "project $p: $(find "$work/ctx-$p" -type f | wc -l) files in the context, base ${LAYOUT[$p]}:${TAG[$p]}"
	run_project "$p"
	# The same work done by all three (berth's coldbase = docker's cold).
	for key in "${!RESULT[@]}"; do
		[[ $key == "$p/"*"/local" ]] || continue
		k=${key%/local}
		for tool in remote docker; do
			o=$k/$tool
			[[ $tool == docker ]] && o=${o/\/coldbase\//\/cold\/}
			[[ ${RESULT[$o]:-} == "${RESULT[$key]}" && -n ${RESULT[$key]} ]] ||
				die "$k: BENCH_RESULT differs or is missing: local=${RESULT[$key]:-none} $tool=${RESULT[$o]:-none}"
		done
	done
done
total=$(elapsed "$start" "$(now)")

# --- report ------------------------------------------------------------------

declare -A LABEL=([cold]="cold" [coldbase]="cold, base in*" [noop]="no-op rebuild" [change]="one-file change")
ratio() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }' || echo "-"; }
fmt() { [[ -n ${1:-} ]] && printf '%.3fs' "$1" || echo "-"; }
# vs_local PROJECT SCENARIO REMOTE LOCAL: the issue's target against local, and ok/MISS.
vs_local() {
	local p=$1 s=$2 r=$3 l=$4
	[[ -n $r && -n $l ]] || { echo "-"; return; }
	case $s in
	noop) awk -v r="$r" -v l="$l" 'BEGIN { d = (r - l) * 1000; printf "%+.0fms (<=50ms) %s", d, (d <= 50 ? "ok" : "MISS") }' ;;
	cold | coldbase) awk -v x="$(ratio "$r" "$l")" 'BEGIN { x += 0; printf "<=1.1x %s", (x <= 1.1 ? "ok" : "MISS") }' ;;
	change)
		if [[ $p == large ]]; then
			awk -v x="$(ratio "$r" "$l")" 'BEGIN { x += 0; printf "<=1.2x %s", (x <= 1.2 ? "ok" : "MISS") }'
		else echo "-"; fi
		;;
	esac
}

echo
echo "remote berth build (--satellite, over a veth pair) vs local berth build vs docker build"
echo "against a remote dockerd (docker.io $(rdocker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'), BuildKit, tcp+TLS)"
echo "wall time of the client command; cold: min of $COLD_REPS; no-op: min of $NOOP_REPS; change: min of $CHANGE_REPS (small), $LARGE_CHANGE_REPS (large). Lower is better."
printf '%-6s %-16s %9s %9s %9s  %-7s %-22s %-8s %s\n' project scenario local remote docker \
	rem/loc "target vs local" rem/dock "target vs docker"
for p in $PROJECTS; do
	for s in "${SCENARIOS[@]}"; do
		l=${T[$p/$s/local]:-} r=${T[$p/$s/remote]:-} d=${T[$p/$s/docker]:-}
		rd=$(ratio "$r" "$d")
		vd="-"
		[[ $rd != "-" ]] && vd=$(awk -v x="${rd%x}" 'BEGIN { printf "<1x %s", (x < 1 ? "ok" : "MISS") }')
		dd=$(fmt "$d")
		printf '%-6s %-16s %9s %9s %9s  %-7s %-22s %-8s %s\n' "$p" "${LABEL[$s]}" \
			"$(fmt "$l")" "$(fmt "$r")" "$dd" "$(ratio "$r" "$l")" "$(vs_local "$p" "$s" "$r" "$l")" "$rd" "$vd"
	done
done
echo "cold: nothing in; docker's figure is \`docker load\` of the base on the builder + its build."
echo "* berth in new roots (a new satellite root for remote) where an untimed warm-up build"
echo "  (FROM base; RUN true) imported and unpacked the base; docker's figure is the build"
echo "  part of its cold run (base loaded, builder cache empty)."
echo "total benchmark time ${total}s; load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
for w in "${WARN[@]}"; do echo "warning: $w"; done

# phases LOG WALL: where a berth build's wall time went, from the times its plain
# progress lines carry (seconds since the client made its progress sink, just after
# it started): before the first step line (remote: connect, mutual TLS, context sums
# and upload, the satellite's first answer), between the first and the last line
# (the steps), and after the last (writing the result, exit; process start-up).
phases() {
	awk -v wall="$2" '
	/^#[0-9]+ +[0-9]+\.[0-9]+ / { t = $2 + 0; if (!seen++) first = t; last = t }
	END { if (seen) printf "    before the first step %.3fs, steps %.3fs, after the last step %.3fs\n", first, last - first, wall - last }
	' "$1"
}
echo
echo "step timings (from --progress plain) of the reported runs:"
for p in $PROJECTS; do
	for s in "${SCENARIOS[@]}"; do
		for tool in $TOOLS; do
			[[ -n ${LOGOF[$p/$s/$tool]:-} ]] || continue
			echo "  $p ${LABEL[$s]} - $tool (${T[$p/$s/$tool]}s):"
			step_times "${LOGOF[$p/$s/$tool]}"
			[[ $tool == docker ]] || phases "${LOGOF[$p/$s/$tool]}" "${T[$p/$s/$tool]}"
			if [[ $tool == remote ]]; then
				grep -o 'context [0-9]* entries, [0-9]* files uploaded, [0-9]* bytes' \
					"${LOGOF[$p/$s/$tool]}" | sed 's/^/    /'
			fi
		done
	done
done
