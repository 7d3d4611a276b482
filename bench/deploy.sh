#!/usr/bin/env bash
# Benchmark deploys to hosts: `berth deploy` of a new version of a small HTTP service to 3
# hosts, against the same steps scripted the Komodo/Kamal-without-proxy way over SSH
# (`docker pull` + `docker stop` + `docker rm` + `docker run -p` + health polling with
# curl, the three hosts in parallel over persistent SSH connections), side by side in one
# run, with an HTTP load on every host during each deploy.
#
# Four network namespaces stand for four machines:
#   dep  10.93.0.1 (on its loopback) `berth registry serve` (port 5000, plain HTTP), the
#        `berth` commands, the ssh client and the load
#   hN   10.93.N.2 (N = 1..3) its own dockerd (data root, exec root, socket, bridge in the
#        namespace, --insecure-registry the dep registry), sshd (root with the bench's
#        key), and `berth agent serve` (enrolled from dep)
# Tools (TOOLS):
#   agent   berth deploy to the three enrolled agents (service on port 8080)
#   ssh     berth deploy to the same hosts as SSH-driven hosts ([deploy.hosts.hN] ssh;
#           berth's agent container, port 8081); each deploy logs in anew
#   script  the scripted stop-then-start (container port published on 8090)
# Each rep builds a new version (index.html changes: one new small layer), untimed, and
# pushes the script's copy to the registry, untimed; then each tool deploys it, in turns,
# timed: the wall time of `berth deploy --version vN` (its push of the new layer
# included) or of the script. Rep 0 is an untimed first deploy of every tool. During each
# deploy a curl loop in dep asks every host's port of that tool, round robin, and counts
# answers and failures. The image's command traps SIGTERM, so stops take no timeout.
# It prints per tool the median and min time, the ratio to the script and the requests
# failed during its deploys. The issue's target (not asserted): berth ≤ 0.5× the
# script, zero failed requests.
#
# Usage: bench/deploy.sh           (as root: network namespaces, dockerds, runc)
#   BERTH_BIN=path   use this berth instead of `cargo build --release -p berth-cli`
#   REPS=5           timed deploys per tool (the median and min are reported)
#   TOOLS="agent ssh script"
#   STORE_DIR=/var/lib   where roots and dockerd data go
#   KEEP_LOGS=dir    copy every log there (failures-TOOL-REP: each failed request)
#   AGENT_LOG=info   the agents' BERTH_LOG (debug: the time of each deploy step)
#   BRIDGE_MAC=1     0: the hosts' bridges have no MAC of their own
# Needs: iproute2, nsenter, docker.io 20.10 (dockerd, /usr/bin/docker), openssh-server,
# openssh-client, curl, busybox-static, runc. The main dockerd is not used.
# On exit (trap): agents, registry, sshds and dockerds stopped, namespaces deleted,
# mounts and directories removed.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
REPS=${REPS:-5}
TOOLS=${TOOLS:-agent ssh script}
DOCKER=/usr/bin/docker
REG=10.93.0.1:5000
BB_TAG=1.35
HOSTS=(1 2 3)
declare -A PORT=([agent]=8080 [ssh]=8081 [script]=8090)
declare -A TIMES FAILS TOTALS

. "$here/common.sh"

work= stores= run_dir= ns_made=
pids=()
cleanup() {
	local rc=$?
	set +e
	local p i
	# The script's persistent ssh connections.
	for p in "$run_dir"/cm-*; do [[ -S $p ]] && ssh -o ControlPath="$p" -O exit x 2>/dev/null; done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do
		for ((i = 0; i < 200; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null
	done
	if [[ -n $ns_made ]]; then
		for i in dep "${HOSTS[@]}"; do ip netns delete "berth-dbench-$$-$i" 2>/dev/null; done
	fi
	if [[ -n $work && -d $work && -n ${KEEP_LOGS:-} ]]; then
		mkdir -p "$KEEP_LOGS" && cp -r "$work/logs/." "$KEEP_LOGS/" 2>/dev/null
	fi
	remove_trees "$stores" "$run_dir" "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || die "run as root (network namespaces, dockerd, runc)"
for t in ip nsenter dockerd runc sshd ssh curl; do
	command -v "$t" >/dev/null || die "$t is not installed"
done
[[ -x $DOCKER ]] || die "$DOCKER (Debian's docker.io client) is not installed"

work=$(mktemp -d /tmp/berth-bench-deploy.XXXXXX)
mkdir -p "$work/logs" "$work/ssh"
stores=$(mktemp -d "${STORE_DIR:-/var/lib}/berth-dbench.XXXXXX")
run_dir=$(mktemp -d /run/berth-dbench.XXXXXX)
private_berth
BERTH=$work/berth
ns() { echo "berth-dbench-$$-$1"; }

# --- the machines ------------------------------------------------------------
ns_made=1
netns_add "$(ns dep)"
ip -n "$(ns dep)" addr add 10.93.0.1/32 dev lo
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/key"
cp "$work/ssh/key.pub" "$work/ssh/authorized_keys"
: > "$work/ssh/known_hosts"
mkdir -p /run/sshd
for i in "${HOSTS[@]}"; do
	h=$(ns "$i")
	netns_add "$h"
	veth_link "$(ns dep)" "10.93.$i.1/24" "$h" "10.93.$i.2/24" "bdb$(($$ % 10000))x$i"
	ip -n "$h" route add 10.93.0.1/32 via "10.93.$i.1"
	# The bridge gets a MAC of its own, as dockerd gives the bridges it makes (BRIDGE_MAC=0:
	# none, as a bridge made by hand; berth's agent then pins its MAC at the first deploy).
	# A bridge without one takes its ports' lowest MAC and moves when that port goes, and
	# a container that learnt the old one sends its answers nowhere until its neighbour
	# entry expires (a request of the load hangs).
	if [[ ${BRIDGE_MAC:-1} == 1 ]]; then
		ip -n "$h" link add bdeploy address "02:42:ac:1e:0$i:01" type bridge
	else
		ip -n "$h" link add bdeploy type bridge
	fi
	ip -n "$h" addr add "172.30.$i.1/24" dev bdeploy
	ip -n "$h" link set bdeploy up
	d=$run_dir/h$i
	mkdir -p "$d" "$stores/h$i"
	# nsenter itself (not in_ns, a function): $! is then the daemon's pid.
	nsenter --net="/run/netns/$h" -- dockerd --data-root "$stores/h$i/docker" --exec-root "$d/exec" --pidfile "$d/docker.pid" \
		-H "unix://$d/docker.sock" --bridge bdeploy --iptables=false --ip-masq=false --ip-forward=false \
		--insecure-registry "$REG" >/dev/null 2>"$work/logs/dockerd-h$i.log" &
	pids+=($!)
	ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host-h$i"
	printf 'ListenAddress 10.93.%s.2:22\nHostKey %s\nAuthorizedKeysFile %s\nPidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowUsers root\nMaxSessions 50\nMaxStartups 50\n' \
		"$i" "$work/ssh/host-h$i" "$work/ssh/authorized_keys" > "$work/ssh/sshd-h$i.conf"
	nsenter --net="/run/netns/$h" -- /usr/sbin/sshd -D -e -f "$work/ssh/sshd-h$i.conf" 2>"$work/logs/sshd-h$i.log" &
	pids+=($!)
	echo "10.93.$i.2 $(cat "$work/ssh/host-h$i.pub")" >> "$work/ssh/known_hosts"
done
for i in "${HOSTS[@]}"; do
	for ((t = 0; t < 300; t++)); do
		$DOCKER -H "unix://$run_dir/h$i/docker.sock" version >/dev/null 2>&1 && break
		sleep 0.2
	done
	$DOCKER -H "unix://$run_dir/h$i/docker.sock" version >/dev/null 2>&1 || die "dockerd of h$i did not start"
done
SSH_BASE="ssh -F none -i $work/ssh/key -o IdentitiesOnly=yes -o UserKnownHostsFile=$work/ssh/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
# The script keeps one connection per host (as Kamal's connection pool does).
SSH_SCRIPT="$SSH_BASE -o ControlMaster=auto -o ControlPath=$run_dir/cm-%h -o ControlPersist=600"

# --- registry, agents, the deploying side's config ---------------------------
mkdir -p "$work/config/berth"
printf '[registries."%s"]\nhttp = true\n' "$REG" > "$work/config/berth/config.toml"
dep_berth() { XDG_CONFIG_HOME=$work/config BERTH_SSH_COMMAND=$SSH_BASE BERTH_LOG=warn in_ns "$(ns dep)" "$BERTH" --root "$stores/dep" "$@"; }
nsenter --net="/run/netns/$(ns dep)" -- "$BERTH" --root "$stores/registry" registry serve --addr "$REG" --allow-anonymous-push \
	>"$work/logs/registry.out" 2>"$work/logs/registry.log" &
pids+=($!)
for i in "${HOSTS[@]}"; do
	DOCKER_HOST=unix://$run_dir/h$i/docker.sock BERTH_LOG=${AGENT_LOG:-info} nsenter --net="/run/netns/$(ns "$i")" -- "$BERTH" \
		--root "$stores/h$i/agent" agent serve --addr "10.93.$i.2:8373" --name "h$i" \
		>"$work/logs/agent-h$i.out" 2>"$work/logs/agent-h$i.log" &
	pids+=($!)
done
for i in "${HOSTS[@]}"; do
	for ((t = 0; t < 300; t++)); do grep -q 'listening on' "$work/logs/agent-h$i.out" 2>/dev/null && break; sleep 0.1; done
	token=$("$BERTH" --root "$stores/h$i/agent" agent token create) || die "agent token of h$i"
	dep_berth host add "h$i" --token "$token" >/dev/null 2>"$work/logs/enroll-h$i.log" ||
		{ cat "$work/logs/enroll-h$i.log" >&2; die "berth host add h$i"; }
	in_ns "$(ns dep)" $SSH_SCRIPT "root@10.93.$i.2" true || die "ssh to h$i"
done

deploy_file() { # TOOL
	local tool=$1 svc=web hosts='"h1", "h2", "h3"'
	[[ $tool == ssh ]] && svc=webssh
	{
		printf '[deploy.registry]\naddress = "%s"\n[deploy.roles.web]\nhosts = [%s]\n' "$REG" "$hosts"
		printf '[deploy.services.%s]\nimage = "app:v0"\nroles = ["web"]\nports = ["%s:80"]\n' "$svc" "${PORT[$tool]}"
		printf 'health = { path = "/health", interval = "200ms", retries = 50 }\n'
		if [[ $tool == ssh ]]; then
			for i in "${HOSTS[@]}"; do
				printf '[deploy.hosts.h%s]\nssh = "root@10.93.%s.2"\ndocker_socket = "%s"\nagent_socket = "%s"\n' \
					"$i" "$i" "$run_dir/h$i/docker.sock" "$run_dir/h$i/agent/agent.sock"
			done
		fi
	} > "$work/$tool.toml"
}
deploy_file agent
deploy_file ssh

# --- the image: busybox httpd, one small layer per version ------------------
bb_layout=$work/busybox-layout
"$repo/scripts/make-busybox-layout" "$bb_layout" "$BB_TAG" >/dev/null
mkdir -p "$work/ctx/www"
cat > "$work/ctx/Dockerfile" <<EOF
FROM oci-layout://$bb_layout:$BB_TAG
COPY www /www
CMD ["/bin/sh", "-c", "trap 'exit 0' TERM; busybox httpd -f -p 80 -h /www & wait"]
EOF
build_version() { # N
	echo "version-$1" > "$work/ctx/www/index.html"
	echo ok > "$work/ctx/www/health"
	dep_berth build -q -t "app:v$1" "$work/ctx" >/dev/null 2>>"$work/logs/build.log" || die "berth build v$1"
	dep_berth build -q -t "$REG/scripted:v$1" --push "$work/ctx" >/dev/null 2>>"$work/logs/build.log" ||
		die "berth build --push v$1"
}

# --- the scripted deploy -----------------------------------------------------
script_deploy() { # N
	local i rc=0
	local -a sp=()
	for i in "${HOSTS[@]}"; do
		in_ns "$(ns dep)" $SSH_SCRIPT "root@10.93.$i.2" "export DOCKER_HOST=unix://$run_dir/h$i/docker.sock
			$DOCKER pull -q $REG/scripted:v$1 >/dev/null || exit 1
			$DOCKER stop app >/dev/null 2>&1; $DOCKER rm app >/dev/null 2>&1
			$DOCKER run -d --name app -p ${PORT[script]}:80 $REG/scripted:v$1 >/dev/null || exit 1
			for t in \$(seq 250); do curl -sf -o /dev/null http://127.0.0.1:${PORT[script]}/health && exit 0; sleep 0.2; done
			exit 1" &
		sp+=($!)
	done
	for i in "${sp[@]}"; do wait "$i" || rc=1; done
	return $rc
}

run_tool() { # TOOL N
	case $1 in
	agent) dep_berth deploy -f "$work/agent.toml" --version "v$2" ;;
	ssh) dep_berth deploy -f "$work/ssh.toml" --version "v$2" ;;
	script) script_deploy "$2" ;;
	esac
}

# load_start TOOL REP: a curl loop on the tool's port of every host, round robin. A request
# fails when curl fails (its exit code: 7 refused, 28 timed out, 52 empty answer, 56 reset)
# or the answer is not 2xx; each failure is logged to logs/failures-TOOL-REP with its time
# (UTC, when it started), host, curl's exit code, HTTP status and duration.
load_start() {
	rm -f "$work/load.stop" "$work/load.count"
	in_ns "$(ns dep)" bash -c '
		ok=0 fail=0 n=0
		while [[ ! -e $1/load.stop ]]; do
			i=$((n % 3 + 1)); n=$((n + 1))
			t=$(date -u +%T.%N)
			rc=0
			out=$(curl -s -o /dev/null -w "%{http_code} %{time_total}" --max-time 5 "http://10.93.$i.2:$2/") || rc=$?
			if [[ $rc == 0 && $out == 2* ]]; then
				ok=$((ok + 1))
			else
				fail=$((fail + 1))
				echo "${t:0:12} h$i curl_exit=$rc http=${out% *} took=${out#* }s" >> "$3"
			fi
		done
		echo "$ok $fail" > "$1/load.count"' load "$work" "${PORT[$1]}" "$work/logs/failures-$1-$2" &
	load_pid=$!
}
load_stop() { touch "$work/load.stop"; wait "$load_pid" || true; }

log "rep 0: first deploy of every tool (untimed)"
build_version 0
for tool in $TOOLS; do
	run_tool "$tool" 0 >"$work/logs/$tool-0.log" 2>&1 || { tail -n 20 "$work/logs/$tool-0.log" >&2; die "$tool: first deploy"; }
done
for tool in $TOOLS; do FAILS[$tool]=0 TOTALS[$tool]=0; done
for ((r = 1; r <= REPS; r++)); do
	build_version "$r"
	for tool in $TOOLS; do
		load_start "$tool" "$r"
		sleep 0.5
		start=$(now)
		run_tool "$tool" "$r" >"$work/logs/$tool-$r.log" 2>&1 || { tail -n 20 "$work/logs/$tool-$r.log" >&2; die "$tool: deploy v$r"; }
		end=$(now)
		sleep 0.5
		load_stop
		read -r ok fail < "$work/load.count"
		TIMES[$tool]+="$(elapsed "$start" "$end") "
		FAILS[$tool]=$((FAILS[$tool] + fail))
		TOTALS[$tool]=$((TOTALS[$tool] + ok + fail))
		for i in "${HOSTS[@]}"; do
			got=$(in_ns "$(ns dep)" curl -sf --max-time 5 "http://10.93.$i.2:${PORT[$tool]}/" || true)
			[[ $got == "version-$r" ]] || die "$tool: h$i answers ${got:-nothing} after deploying v$r"
		done
		log "rep $r $tool: $(elapsed "$start" "$end") s, $fail of $((ok + fail)) requests failed (from $(date -u -d "@$start" +%T.%3N) UTC)"
		[[ -s $work/logs/failures-$tool-$r ]] && sed 's/^/     failed: /' "$work/logs/failures-$tool-$r" >&2
	done
done

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
declare -A MED
for tool in $TOOLS; do
	# shellcheck disable=SC2086
	MED[$tool]=$(median ${TIMES[$tool]})
done
echo
echo "deploy of a new version to 3 hosts, $REPS reps (image built; berth's time includes its push)"
printf '%-8s %10s %10s %12s %18s\n' tool median_s min_s vs_script failed_requests
for tool in $TOOLS; do
	# shellcheck disable=SC2086
	mn=$(min ${TIMES[$tool]})
	ratio=-
	if [[ -n ${MED[script]:-} ]]; then
		ratio=$(awk -v a="${MED[$tool]}" -v b="${MED[script]}" 'BEGIN { printf "%.2fx", a / b }')
	fi
	printf '%-8s %10.3f %10.3f %12s %18s\n' "$tool" "${MED[$tool]}" "$mn" "$ratio" "${FAILS[$tool]}/${TOTALS[$tool]}"
done
echo "target (issue 11): berth <= 0.5x the script, zero failed requests"
