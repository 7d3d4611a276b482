#!/usr/bin/env bash
# Benchmark berth's registry on S3-compatible object storage, on one moto server on
# 127.0.0.1:
# 1. one berth replica against Debian's docker-registry (distribution 2.8) with its S3
#    driver (a bucket each): monolithic push, chunked push, pull of one big blob;
# 2. aggregate pull throughput of CLIENTS clients at once through one berth replica
#    and through three on one bucket (client i on replica i mod n), with the bytes
#    through the replicas and with `redirect = true` (a 307 to a presigned URL: the
#    bytes come from the bucket, curl -L follows). The CPU seconds moto, the replicas
#    and the clients spent in each round are printed beside it: they say what bounds it.
#
# Usage: bench/registry-s3.sh
#   BERTH_BIN=path     use this berth binary instead of `cargo build --release -p berth-cli`
#   DIST_BIN=path      distribution binary (default: docker-registry from PATH)
#   SIZE_MIB=128       size of the blob of part 1 (MiB)
#   REPS=3             attempts per measurement (the median is reported)
#   CLIENTS=32         parallel clients of part 2
#   PULL_MIB=32        size of each blob pulled in part 2 (MiB)
#   PULL_BLOBS=8       distinct blobs pulled in part 2 (client i pulls blob i mod this)
#   REPLICAS=3         replicas of part 2's "n replicas" rows
#
# Needs: curl, python3, GNU time (/usr/bin/time), docker-registry, moto_server
# (scripts/install-test-deps).
# It fails (non-zero) if any request fails; the ratios are only reported, never enforced.
# moto is slow and single-threaded: the ratios say more about the registries' overhead
# than about what they would do on a real S3. Only 127.0.0.1 is contacted.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

SIZE_MIB=${SIZE_MIB:-128}
REPS=${REPS:-3}
MIB=$((1024 * 1024))
SIZE=$((SIZE_MIB * MIB))
CHUNK=$((16 * MIB))
REPO=bench
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
SERVERS=(berth distribution)

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY AWS_CA_BUNDLE
CURL=(--silent --show-error --noproxy '*' --max-time 600 -H 'Expect:')

declare -A url pid errlog res cpu
clk=$(getconf CLK_TCK)

# CPU seconds (user + system) of process $1 so far.
cpu_secs() { awk -v t="$clk" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
# "moto server" CPU seconds so far.
cpu_now() { echo "$(cpu_secs "${pid[moto]}") $(cpu_secs "${pid[$1]}")"; }
# Add the CPU seconds between two cpu_now readings to cpu[$1].
add_cpu() { # key "before" "after"
	cpu[$1]=$(awk -v o="${cpu[$1]:-0 0}" -v b="$2" -v a="$3" 'BEGIN {
		split(o, x, " "); split(b, y, " "); split(a, z, " ")
		printf "%.2f %.2f", x[1] + z[1] - y[1], x[2] + z[2] - y[2] }')
}

# shellcheck source=bench/registry-lib.sh
source "$here/registry-lib.sh"


command -v moto_server >/dev/null || die "moto_server not found (scripts/install-test-deps)"
find_servers
work=$(mktemp -d)
trap cleanup EXIT

ports=$(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
read -r moto_port port_berth port_dist <<<"$ports"
moto=http://127.0.0.1:$moto_port
errlog[moto]=$work/moto.log
moto_server -H 127.0.0.1 -p "$moto_port" >"${errlog[moto]}" 2>&1 &
pid[moto]=$!
for ((i = 0; i < 300; i++)); do
	curl "${CURL[@]}" -o /dev/null "$moto/moto-api/" 2>/dev/null && break
	sleep 0.1
done
for b in berth dist; do
	[[ $(curl "${CURL[@]}" -o /dev/null -w '%{http_code}' -X PUT "$moto/$b") == 200 ]] ||
		die "cannot create bucket $b on moto"
done
log "moto on $moto"

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
mkdir -p "$work/berth/root" "$work/distribution"
cat >"$work/berth/config.toml" <<EOF
[registry.storage]
kind = "s3"
bucket = "berth"
endpoint = "$moto"
EOF
errlog[berth]=$work/berth/stderr
BERTH_LOG=warn "$berth_bin" registry serve --addr "127.0.0.1:$port_berth" --root "$work/berth/root" \
	--config "$work/berth/config.toml" >"$work/berth/stdout" 2>"${errlog[berth]}" &
pid[berth]=$!
url[berth]=http://127.0.0.1:$port_berth
wait_ready berth

cat >"$work/distribution/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: test
    secretkey: test
    region: us-east-1
    regionendpoint: $moto
    bucket: dist
    secure: false
    v4auth: true
    chunksize: 8388608
  redirect:
    disable: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port_dist
EOF
errlog[distribution]=$work/distribution/stderr
"$dist_bin" serve "$work/distribution/config.yml" >/dev/null 2>"${errlog[distribution]}" &
pid[distribution]=$!
url[distribution]=http://127.0.0.1:$port_dist
wait_ready distribution
log "berth on ${url[berth]}, distribution on ${url[distribution]}, blob of $SIZE_MIB MiB, $REPS reps"

head -c "$SIZE" /dev/urandom >"$work/big"

# Chunked push: POST, PATCH chunks of 16 MiB with Content-Range, closing PUT.
push_chunked() { # server file digest
	local s=$1 file=$2 digest=$3 loc out off=0 size hdr
	size=$(stat -c %s "$file")
	loc=$(start_upload "$s")
	while ((off < size)); do
		local n=$((size - off < CHUNK ? size - off : CHUNK))
		hdr=$(dd if="$file" iflag=skip_bytes,count_bytes skip="$off" count="$n" bs=1M status=none |
			curl "${CURL[@]}" -o /dev/null -D - -X PATCH -H 'Content-Type: application/octet-stream' \
				-H "Content-Range: $off-$((off + n - 1))" --data-binary @- "$loc") ||
			die "$s: PATCH at $off: curl failed"
		[[ $(head -1 <<<"$hdr") == *" 202"* ]] || die "$s: PATCH at $off: $(head -1 <<<"$hdr")"
		loc=$(abs_url "$s" "$(grep -i '^location:' <<<"$hdr" | cut -d' ' -f2 | tr -d '\r')")
		off=$((off + n))
	done
	out=$(curl "${CURL[@]}" -o /dev/null -X PUT -w '%{http_code}' "$(with_digest "$loc" "$digest")") ||
		die "$s: closing PUT: curl failed"
	[[ $out == 201 ]] || die "$s: closing PUT answered $out"
}

for s in "${SERVERS[@]}"; do
	push=() chunked=() pull=()
	for ((r = 0; r < REPS; r++)); do
		refresh_blob "$work/big"
		d=$(sha "$work/big")
		c0=$(cpu_now "$s") t0=$(now)
		push_blob "$s" "$work/big" "$d"
		push+=("$(mbps "$SIZE" "$(elapsed "$t0" "$(now)")")")
		add_cpu "push|$s" "$c0" "$(cpu_now "$s")"
		c0=$(cpu_now "$s") t0=$(now)
		out=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code} %{size_download}' "${url[$s]}/v2/$REPO/blobs/$d") ||
			die "$s: GET blob: curl failed"
		[[ $out == "200 $SIZE" ]] || die "$s: GET blob: got '$out'"
		pull+=("$(mbps "$SIZE" "$(elapsed "$t0" "$(now)")")")
		add_cpu "pull|$s" "$c0" "$(cpu_now "$s")"
		refresh_blob "$work/big"
		d=$(sha "$work/big")
		c0=$(cpu_now "$s") t0=$(now)
		push_chunked "$s" "$work/big" "$d"
		chunked+=("$(mbps "$SIZE" "$(elapsed "$t0" "$(now)")")")
		add_cpu "chunked|$s" "$c0" "$(cpu_now "$s")"
	done
	res[push|$s]=$(median "${push[@]}")
	res[chunked|$s]=$(median "${chunked[@]}")
	res[pull|$s]=$(median "${pull[@]}")
done

printf '\n%-28s %12s %14s %10s\n' "MB/s (median of $REPS)" berth distribution ratio
for m in push chunked pull; do
	b=${res[$m|berth]} d=${res[$m|distribution]}
	printf '%-28s %12s %14s %9sx\n' "$m ${SIZE_MIB} MiB" "$b" "$d" "$(awk -v b="$b" -v d="$d" 'BEGIN { printf "%.2f", b / d }')"
done
printf '\n%-28s %24s %24s\n' "CPU s, all $REPS reps" "berth: moto / itself" "distribution: moto / itself"
for m in push chunked pull; do
	printf '%-28s %24s %24s\n' "$m ${SIZE_MIB} MiB" "${cpu[$m|berth]/ / \/ }" "${cpu[$m|distribution]/ / \/ }"
done

# --- 2. Aggregate pull throughput: one replica against REPLICAS on the same bucket ---

CLIENTS=${CLIENTS:-32}
PULL_MIB=${PULL_MIB:-32}
PULL_BLOBS=${PULL_BLOBS:-8}
REPLICAS=${REPLICAS:-3}
PULL_SIZE=$((PULL_MIB * MIB))
start_replica() { # name port redirect
	local name=$1 dir=$work/$1
	mkdir -p "$dir/root"
	cat >"$dir/config.toml" <<-EOF
		[registry.storage]
		kind = "s3"
		bucket = "berth"
		endpoint = "$moto"
		redirect = $3
	EOF
	errlog[$name]=$dir/stderr
	BERTH_LOG=warn "$berth_bin" registry serve --addr "127.0.0.1:$2" --root "$dir/root" \
		--config "$dir/config.toml" >"$dir/stdout" 2>"${errlog[$name]}" &
	pid[$name]=$!
	url[$name]=http://127.0.0.1:$2
	wait_ready "$name"
}

stop_replica() { # name
	kill "${pid[$1]}" 2>/dev/null || true
	wait "${pid[$1]}" 2>/dev/null || true
	unset "pid[$1]"
}

# One round: CLIENTS pulls at once over the replicas given; prints MB/s and the CPU
# seconds of moto and of the replicas during the round.
pull_round() { # replica...
	local reps=("$@") n=$# i r out cpids=() moto0 rep0=0 rep1=0 t0 t1
	moto0=$(cpu_secs "${pid[moto]}")
	for r in "${reps[@]}"; do rep0=$(awk -v a="$rep0" -v b="$(cpu_secs "${pid[$r]}")" 'BEGIN { print a + b }'); done
	t0=$(now)
	for ((i = 0; i < CLIENTS; i++)); do
		r=${reps[i % n]}
		/usr/bin/time -f '%U %S' -o "$work/pull.$i.cpu" \
			curl "${CURL[@]}" -L -o /dev/null -w '%{http_code} %{size_download}' \
			"${url[$r]}/v2/$REPO/blobs/${pulls[i % PULL_BLOBS]}" >"$work/pull.$i" 2>&1 &
		cpids+=($!)
	done
	for i in "${!cpids[@]}"; do
		wait "${cpids[$i]}" || die "pull $i: curl failed: $(cat "$work/pull.$i")"
	done
	t1=$(now)
	for ((i = 0; i < CLIENTS; i++)); do
		out=$(cat "$work/pull.$i")
		[[ $out == "200 $PULL_SIZE" ]] || die "pull $i: got '$out', want '200 $PULL_SIZE'"
	done
	for r in "${reps[@]}"; do rep1=$(awk -v a="$rep1" -v b="$(cpu_secs "${pid[$r]}")" 'BEGIN { print a + b }'); done
	clients=$(cat "$work"/pull.*.cpu | awk '{ n += $1 + $2 } END { printf "%.2f", n }')
	rm -f "$work"/pull.*.cpu
	printf '%s %s %s %s %s\n' "$(mbps $((CLIENTS * PULL_SIZE)) "$(elapsed "$t0" "$t1")")" \
		"$(elapsed "$t0" "$t1")" "$(elapsed "$moto0" "$(cpu_secs "${pid[moto]}")")" "$(elapsed "$rep0" "$rep1")" "$clients"
}

stop_replica berth
stop_replica distribution
SERVERS=()
for ((k = 0; k < REPLICAS; k++)); do SERVERS+=("r$k"); done
ports=$(python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])' "$REPLICAS")
read -r -a rports <<<"$ports"

declare -A pullres
pulls=()
for redirect in false true; do
	for ((k = 0; k < REPLICAS; k++)); do start_replica "r$k" "${rports[$k]}" "$redirect"; done
	if ((${#pulls[@]} == 0)); then
		for ((b = 0; b < PULL_BLOBS; b++)); do
			head -c "$PULL_SIZE" /dev/urandom >"$work/pull-blob"
			pulls+=("$(sha "$work/pull-blob")")
			push_blob r0 "$work/pull-blob" "${pulls[b]}"
		done
		rm -f "$work/pull-blob"
		log "pushed $PULL_BLOBS blobs of $PULL_MIB MiB; $CLIENTS clients pull $((CLIENTS * PULL_MIB)) MiB a round"
	fi
	for n in 1 "$REPLICAS"; do
		reps=()
		for ((k = 0; k < n; k++)); do reps+=("r$k"); done
		rows=()
		for ((r = 0; r < REPS; r++)); do
			row=$(pull_round "${reps[@]}")
			rows+=("$row")
			log "redirect=$redirect, $n replica(s): ${rows[-1]} (MB/s, s, CPU s of moto, replicas, clients)"
		done
		# The round with the median throughput.
		pullres[$redirect|$n]=$(printf '%s\n' "${rows[@]}" | sort -g | sed -n "$(((REPS + 1) / 2))p")
	done
	for ((k = 0; k < REPLICAS; k++)); do stop_replica "r$k"; done
done

printf '\n%-34s %8s %6s %22s %7s\n' "pull, $CLIENTS clients (median of $REPS)" MB/s secs "CPU s: moto/repl/cli" ratio
for redirect in false true; do
	base=${pullres[$redirect|1]%% *}
	for n in 1 "$REPLICAS"; do
		read -r m secs mc rc cc <<<"${pullres[$redirect|$n]}"
		label="$n replica(s)"
		[[ $redirect == true ]] && label="$label, redirect"
		printf '%-34s %8s %6.2f %22s %6sx\n' "$label" "$m" "$secs" "$(printf '%.2f / %.2f / %.2f' "$mc" "$rc" "$cc")" \
			"$(awk -v a="$m" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
	done
done
echo "(ratio: against 1 replica with the same redirect setting; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg);"
echo " CPU s: moto's, the replicas' and the clients' during the round, against secs × $(nproc) CPUs)"
