# Shell helpers the benchmark scripts share; sourced, not run.
# die names the script that sourced this file.
log() { echo "== $*" >&2; }
die() { echo "$(basename "$0"): FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
min() { printf '%s\n' "$@" | sort -g | head -n 1; }
has_tool() { [[ " $TOOLS " == *" $1 "* ]]; }

# --- bench projects (the same as bench/build.sh's) ----------------------------
# The callers set: here (bench/), work (a temp dir), CACHE, DEBIAN_MIRROR, DEB_TAG,
# LARGE_MODULES, LARGE_FILES, LARGE_BUILT, and declare -A CHANGED.

# debian_rootfs: Debian bookworm minbase with gcc, debootstrapped once into $CACHE.
debian_rootfs() {
	local rootfs=$CACHE/debian-rootfs
	[[ -f $rootfs/.berth-bench-ready ]] && return
	command -v debootstrap >/dev/null || apt-get install -y debootstrap >/dev/null
	log "debootstrap bookworm (minbase + gcc, libc6-dev) into $rootfs (first run only)"
	mkdir -p "$CACHE" "$work/logs"
	rm -rf "$rootfs.tmp"
	debootstrap --variant=minbase --include=gcc,libc6-dev bookworm "$rootfs.tmp" "$DEBIAN_MIRROR" \
		>"$work/logs/debootstrap.log" 2>&1 || { tail -n 20 "$work/logs/debootstrap.log" >&2; die debootstrap; }
	# What an image does not carry: package caches, device nodes, the host's names.
	rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/cache/apt/*.bin \
		"$rootfs.tmp"/var/lib/apt/lists/* "$rootfs.tmp"/dev/*
	: > "$rootfs.tmp/etc/resolv.conf"
	echo localhost > "$rootfs.tmp/etc/hostname"
	touch "$rootfs.tmp/.berth-bench-ready"
	rm -rf "$rootfs"
	mv "$rootfs.tmp" "$rootfs"
}

# oci_layout ROOTFS LAYOUT TAG CMD: a deterministic one-layer OCI image layout of ROOTFS.
oci_layout() {
	local rootfs=$1 dir=$2 tag=$3 cmd=$4 tmp=$2.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp/blobs/sha256"
	tar --sort=name --numeric-owner --owner=0 --group=0 --format=gnu \
		--exclude=./.berth-bench-ready -C "$rootfs" -cf "$tmp/layer.tar" .
	local diff_id layer layer_size config config_size manifest manifest_size
	diff_id=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
	gzip -n -6 < "$tmp/layer.tar" > "$tmp/layer.tar.gz"
	rm "$tmp/layer.tar"
	layer=$(sha256sum "$tmp/layer.tar.gz" | cut -d' ' -f1)
	layer_size=$(stat -c %s "$tmp/layer.tar.gz")
	mv "$tmp/layer.tar.gz" "$tmp/blobs/sha256/$layer"
	printf '%s' "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"$cmd\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"berth bench/build.sh\"}],\"created\":\"1970-01-01T00:00:00Z\"}" > "$tmp/config.json"
	config=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
	config_size=$(stat -c %s "$tmp/config.json")
	mv "$tmp/config.json" "$tmp/blobs/sha256/$config"
	printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer\",\"size\":$layer_size}]}" > "$tmp/manifest.json"
	manifest=$(sha256sum "$tmp/manifest.json" | cut -d' ' -f1)
	manifest_size=$(stat -c %s "$tmp/manifest.json")
	mv "$tmp/manifest.json" "$tmp/blobs/sha256/$manifest"
	printf '{"imageLayoutVersion":"1.0.0"}' > "$tmp/oci-layout"
	printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$tag\"}}]}" > "$tmp/index.json"
	rm -rf "$dir"
	mv "$tmp" "$dir"
}

# debian_layout: $CACHE/debian-layout, the Debian rootfs as an OCI layout tagged $DEB_TAG.
debian_layout() {
	local dir=$CACHE/debian-layout
	debian_rootfs
	if [[ ! -f $dir/index.json || $CACHE/debian-rootfs/.berth-bench-ready -nt $dir/index.json ]]; then
		log "making the Debian OCI layout $dir (first run only)"
		oci_layout "$CACHE/debian-rootfs" "$dir" "$DEB_TAG" bash
	fi
}

# prepare_project PROJECT: its context in $work/ctx-PROJECT, CHANGED[PROJECT] the file a
# one-file change edits (its original kept as $work/orig-PROJECT).
#   small  bench/projects/small (busybox base)
#   large  bench/projects/large/generate.sh (Debian + gcc base)
#   incremental  large with Dockerfile.incremental (objects in a cache mount)
#   regapp  bench/projects/regapp/generate.sh (Debian + gcc base, from a registry)
prepare_project() {
	local p=$1 ctx=$work/ctx-$1
	rm -rf "$ctx"
	case $p in
	small) cp -r "$here/projects/small" "$ctx" ;;
	large | incremental)
		debian_layout
		"$here/projects/large/generate.sh" "$ctx" "$LARGE_MODULES" "$LARGE_FILES" "$LARGE_BUILT"
		[[ $p == incremental ]] && cp "$here/projects/large/Dockerfile.incremental" "$ctx/Dockerfile"
		;;
	regapp)
		debian_layout
		"$here/projects/regapp/generate.sh" "$ctx" "${REGAPP_CFILES:-120}" "${REGAPP_ASSETS:-3000}"
		;;
	*) die "unknown project $p" ;;
	esac
	CHANGED[$p]=$(changed_file "$p")
	cp "$ctx/${CHANGED[$p]}" "$work/orig-$p"
}
changed_file() {
	case $1 in
	small) echo src/notes-05.txt ;;
	large | incremental) echo modules/m00/m00_f000.c ;;
	regapp) echo assets/d00/asset-0000.txt ;;
	esac
}
# set_source PROJECT REV: rev 0 is the original file; rev N > 0 a new content.
set_source() {
	local p=$1 rev=$2 f=$work/ctx-$1/${CHANGED[$1]}
	cp "$work/orig-$p" "$f"
	((rev == 0)) && return
	case $p in
	small | regapp) echo "line rev: changed $rev" >> "$f" ;;
	large | incremental) sed -i "s/^#define BENCH_REV 0$/#define BENCH_REV $rev/" "$f" ;;
	esac
}

# bench_result LOG: the BENCH_RESULT value a build printed (the projects' last RUN).
bench_result() { grep -o 'BENCH_RESULT=[0-9a-f]\+' "$1" | tail -n 1 | cut -d= -f2 || true; }

# Step timings of a build log (berth's or BuildKit's plain progress): "time name".
step_times() { # log
	awk '
	/^#[0-9]+ / {
		id = $1
		line = $0; sub(/^#[0-9]+ +/, "", line)
		if (line ~ /^[0-9]+\.[0-9]+ /) sub(/^[0-9]+\.[0-9]+ +/, "", line)
		if (!(id in name)) { name[id] = line; order[++n] = id }
		if (line ~ /^DONE [0-9.]+s$/) { t = line; sub(/^DONE /, "", t); done[id] = t }
		else if (line ~ / CACHED$/ || line == "CACHED") done[id] = "cached"
	}
	END {
		for (i = 1; i <= n; i++) {
			id = order[i]
			if (done[id] == "cached") cached++
			else if (id in done) printf "    %-6s %s\n", done[id], substr(name[id], 1, 90)
		}
		if (cached) printf "    (%d steps cached)\n", cached
	}
	' "$1"
}

# --- network namespaces ("hosts" joined by veth pairs) ------------------------
# Enter them with in_ns (nsenter --net): `ip netns exec` also makes a mount namespace
# with a fresh /sys, which hides the cgroup mounts runc needs.

# netns_add NAME: a new network namespace with its loopback up.
netns_add() {
	ip netns delete "$1" 2>/dev/null || true
	ip netns add "$1" || die "ip netns add $1"
	ip -n "$1" link set lo up
}
# veth_link NS_A ADDR_A NS_B ADDR_B IFNAME: a veth pair IFNAMEa (in A) - IFNAMEb (in B),
# addresses in CIDR notation; IFNAME at most 14 bytes.
veth_link() {
	local a=$1 aa=$2 b=$3 ba=$4 ea=${5}a eb=${5}b
	ip link add "$ea" type veth peer name "$eb" || die "ip link add $ea"
	ip link set "$ea" netns "$a" && ip link set "$eb" netns "$b" || die "move $ea/$eb into $a/$b"
	ip -n "$a" addr add "$aa" dev "$ea" && ip -n "$a" link set "$ea" up || die "address $aa on $ea"
	ip -n "$b" addr add "$ba" dev "$eb" && ip -n "$b" link set "$eb" up || die "address $ba on $eb"
}
# remove_trees DIR...: unmounts anything still mounted below each DIR (berth's and
# dockerd's overlays, dockerd's netns bind mounts), deepest first, then removes it.
remove_trees() {
	local d
	for d in "$@"; do
		[[ -n $d && -d $d ]] || continue
		findmnt -rn -o TARGET | awk -v w="$d/" 'index($0, w) == 1' | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		rm -rf "$d"
	done
}
# in_ns NAME CMD...: CMD in network namespace NAME (and nothing else changed).
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }

# This VM's ext4 has no journal, and ext4 then avoids reusing an inode freed in the last
# 60 s (RECENTCY_MIN in fs/ext4/ialloc.c), or 360 s while its inode-table block is dirty
# (+RECENTCY_DIRTY): each new inode scans past every such free inode of its group, with a
# buffer-cache lookup apiece. A mass creation dirties those blocks itself, so right after
# a mass deletion (docker builder prune, rmi, a removed root) creating thousands of files
# costs seconds of kernel time in whichever tool comes next, for about 6 minutes: an
# unpack of regapp's Debian base spent 5-10 s in the kernel at once and 65 s after a
# deletion of the same size, 1.1 s after 6.5 minutes (`perf`: recently_deleted,
# find_get_block_common). settle waits SETTLE_SECS (default 361) after $last_delete (a
# now timestamp); SETTLE=0 skips.
settle() {
	local left
	[[ ${SETTLE:-1} == 1 ]] || return 0
	left=$(awk -v l="${last_delete:-0}" -v n="$(now)" -v e="${SETTLE_SECS:-361}" 'BEGIN { d = e - (n - l); print (d > 0 ? d : 0) }')
	log "settling $(printf '%.0f' "$left")s after deletions"
	sleep "$left"
}

# private_berth: $work/berth, a private copy (a concurrent rebuild must not swap the
# binary mid-benchmark) of $BERTH_BIN or of a release build of the workspace at $repo.
# Others may be editing the workspace: a build can fail for a moment, so it is retried.
private_berth() {
	if [[ -n ${BERTH_BIN:-} ]]; then
		cp "$BERTH_BIN" "$work/berth"
		return
	fi
	local try
	for try in 1 2 3 4 5 6; do
		if (cd "$repo" && cargo build --release -p berth-cli) >"$work/logs/cargo.log" 2>&1; then break; fi
		[[ $try == 6 ]] && { tail -n 30 "$work/logs/cargo.log" >&2; die "cargo build --release -p berth-cli"; }
		log "cargo build failed (try $try), retrying in 20 s"
		sleep 20
	done
	cp "${CARGO_TARGET_DIR:-$repo/target}/release/berth" "$work/berth"
}
