#!/usr/bin/env bash
# Benchmark berth's registry on S3-compatible object storage against Debian's
# docker-registry (distribution 2.8) with its S3 driver, both on one moto server on
# 127.0.0.1 (a bucket each): monolithic push, chunked push, pull of one big blob.
#
# Usage: bench/registry-s3.sh
#   BERTH_BIN=path     use this berth binary instead of `cargo build --release -p berth-cli`
#   DIST_BIN=path      distribution binary (default: docker-registry from PATH)
#   SIZE_MIB=128       size of the blob (MiB)
#   REPS=3             attempts per measurement (the median is reported)
#
# Needs: curl, python3, docker-registry, moto_server (scripts/install-test-deps).
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

declare -A url pid errlog res

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
		t0=$(now)
		push_blob "$s" "$work/big" "$d"
		push+=("$(mbps "$SIZE" "$(elapsed "$t0" "$(now)")")")
		t0=$(now)
		out=$(curl "${CURL[@]}" -o /dev/null -w '%{http_code} %{size_download}' "${url[$s]}/v2/$REPO/blobs/$d") ||
			die "$s: GET blob: curl failed"
		[[ $out == "200 $SIZE" ]] || die "$s: GET blob: got '$out'"
		pull+=("$(mbps "$SIZE" "$(elapsed "$t0" "$(now)")")")
		refresh_blob "$work/big"
		d=$(sha "$work/big")
		t0=$(now)
		push_chunked "$s" "$work/big" "$d"
		chunked+=("$(mbps "$SIZE" "$(elapsed "$t0" "$(now)")")")
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
