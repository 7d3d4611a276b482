# Shared by bench/registry.sh and bench/registry-hostile.sh (sourced, not run): starting
# berth and Debian's docker-registry on 127.0.0.1, pushing a small image, cleaning up.
#
# The sourcing script sets root, declares `declare -A url pid errlog res`, sets SERVERS,
# REPO, OCI_MANIFEST and CURL (curl options for every request, credentials included), and
# may set BERTH_SERVE_ARGS (extra `berth registry serve` arguments) and DIST_EXTRA_CONFIG
# (YAML lines appended to distribution's config, e.g. an auth section).
# shellcheck shell=bash disable=SC2034,SC2154

log() { echo "== $*" >&2; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
mbps() { awk -v bytes="$1" -v secs="$2" 'BEGIN { printf "%.1f", bytes / secs / 1e6 }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Overwrite the first bytes of $1 with random ones: a new blob without rewriting it all.
refresh_blob() { head -c 64 /dev/urandom | dd of="$1" bs=64 count=1 conv=notrunc status=none; }

die() {
	echo "${0##*/}: FAILED: $*" >&2
	local s
	for s in "${SERVERS[@]}"; do
		[[ -n ${errlog[$s]:-} && -s ${errlog[$s]} ]] || continue
		echo "--- last lines of $s stderr:" >&2
		tail -n 20 "${errlog[$s]}" >&2
	done
	exit 1
}

cleanup() {
	local s
	for s in "${!pid[@]}"; do kill "${pid[$s]}" 2>/dev/null || true; done
	for s in "${!pid[@]}"; do wait "${pid[$s]}" 2>/dev/null || true; done
	if [[ -n ${work:-} ]]; then rm -rf "$work"; fi
}

sha() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

# Two distinct free ports, both held open while they are chosen.
free_ports() {
	python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])'
}

wait_ready() { # server
	local s=$1 i code
	for ((i = 0; i < 200; i++)); do
		kill -0 "${pid[$s]}" 2>/dev/null || die "$s exited during startup"
		code=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' "${url[$s]}/v2/" 2>/dev/null) || true
		[[ $code == 200 ]] && return 0
		sleep 0.1
	done
	die "$s did not answer 200 on ${url[$s]}/v2/ within 20 s"
}

start_berth() { # port
	local dir=$work/berth
	mkdir -p "$dir/root"
	: >"$dir/config.toml" # empty config: ignore the user's own berth config
	errlog[berth]=$dir/stderr
	BERTH_LOG=warn "$berth_bin" registry serve --addr "127.0.0.1:$1" --root "$dir/root" \
		--config "$dir/config.toml" "${BERTH_SERVE_ARGS[@]}" >"$dir/stdout" 2>"${errlog[berth]}" &
	pid[berth]=$!
	url[berth]=http://127.0.0.1:$1
	wait_ready berth
}

start_distribution() { # port
	local dir=$work/distribution
	mkdir -p "$dir/root"
	# Debian's default config minus health, with request logging off like berth's.
	cat >"$dir/config.yml" <<-EOF
		version: 0.1
		log:
		  level: warn
		  accesslog:
		    disabled: true
		storage:
		  cache:
		    blobdescriptor: inmemory
		  filesystem:
		    rootdirectory: $dir/root
		http:
		  addr: 127.0.0.1:$1
		${DIST_EXTRA_CONFIG:-}
	EOF
	errlog[distribution]=$dir/stderr
	"$dist_bin" serve "$dir/config.yml" >"$dir/stdout" 2>"${errlog[distribution]}" &
	pid[distribution]=$!
	url[distribution]=http://127.0.0.1:$1
	wait_ready distribution
}

# Make a Location header absolute; refuse anything that is not this server.
abs_url() { # server location
	local base=${url[$1]} loc=$2
	case $loc in
	"$base"/*) echo "$loc" ;;
	/*) echo "$base$loc" ;;
	*) die "$1 sent Location '$loc', which is not on $base" ;;
	esac
}

with_digest() { # url digest
	if [[ $1 == *\?* ]]; then echo "$1&digest=$2"; else echo "$1?digest=$2"; fi
}

# POST /v2/<repo>/blobs/uploads/ -> absolute upload URL.
start_upload() { # server
	local out
	out=$(curl "${CURL[@]}" -o /dev/null -X POST -H 'Content-Length: 0' \
		-w '%{http_code} %header{location}' "${url[$1]}/v2/$REPO/blobs/uploads/") ||
		die "$1: POST upload: curl failed"
	[[ ${out%% *} == 202 ]] || die "$1: POST /v2/$REPO/blobs/uploads/ answered ${out%% *}, want 202"
	abs_url "$1" "${out#* }"
}

# Monolithic push: POST, then PUT ?digest= with the whole body.
push_blob() { # server file digest
	local s=$1 file=$2 digest=$3 loc out
	loc=$(start_upload "$s")
	out=$(curl "${CURL[@]}" -o /dev/null -H 'Content-Type: application/octet-stream' \
		-T "$file" -w '%{http_code} %{size_upload}' "$(with_digest "$loc" "$digest")") ||
		die "$s: PUT $digest: curl failed"
	[[ $out == "201 $(stat -c %s "$file")" ]] || die "$s: PUT $digest: got '$out', want '201 <size>'"
}

# A small OCI image (config `{}` + one 4 KiB layer) tagged bench:latest.
push_manifest() { # server
	local s=$1 out
	push_blob "$s" "$work/config.json" "$(sha "$work/config.json")"
	push_blob "$s" "$work/layer" "$(sha "$work/layer")"
	out=$(curl "${CURL[@]}" -o /dev/null -X PUT -H "Content-Type: $OCI_MANIFEST" \
		--data-binary @"$work/manifest.json" -w '%{http_code}' "${url[$s]}/v2/$REPO/manifests/latest") ||
		die "$s: PUT manifest: curl failed"
	[[ $out == 201 ]] || die "$s: PUT manifest answered $out, want 201"
	out=$(curl "${CURL[@]}" -o /dev/null -H "Accept: $OCI_MANIFEST" -w '%{http_code} %{size_download}' \
		"${url[$s]}/v2/$REPO/manifests/latest") || die "$s: GET manifest: curl failed"
	[[ $out == "200 $(stat -c %s "$work/manifest.json")" ]] || die "$s: GET manifest: got '$out'"
}

make_manifest() {
	printf '{}' >"$work/config.json"
	head -c 4096 /dev/urandom >"$work/layer"
	cat >"$work/manifest.json" <<-EOF
		{"schemaVersion":2,"mediaType":"$OCI_MANIFEST",
		 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$(sha "$work/config.json")","size":2},
		 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$(sha "$work/layer")","size":4096}]}
	EOF
}

# Start both servers on two free ports of 127.0.0.1.
start_servers() {
	local ports port_berth port_dist
	# Command substitution (not `< <(...)`) waits for the helper to exit and release
	# both ports before the servers bind them.
	ports=$(free_ports)
	read -r port_berth port_dist <<<"$ports"
	start_berth "$port_berth"
	start_distribution "$port_dist"
	log "berth on ${url[berth]}, distribution on ${url[distribution]} ($($dist_bin --version))"
}

# Sets dist_bin and berth_bin (building berth unless BERTH_BIN is set).
find_servers() {
	dist_bin=${DIST_BIN:-$(command -v docker-registry || true)}
	[[ -x $dist_bin ]] || die "docker-registry not found (apt-get install -y docker-registry)"
	if [[ -n ${BERTH_BIN:-} ]]; then
		berth_bin=$BERTH_BIN
	else
		log "building berth (release)"
		(cd "$root" && cargo build --release -p berth-cli >&2)
		berth_bin=${CARGO_TARGET_DIR:-$root/target}/release/berth
	fi
	[[ -x $berth_bin ]] || die "no berth binary at $berth_bin"
}
