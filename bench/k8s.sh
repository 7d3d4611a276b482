#!/usr/bin/env bash
# Benchmark berth on Kubernetes (issue 12): server-side apply of 50 services (ConfigMap,
# Deployment and Service each), and a no-op re-apply of the same, by berth (berth-kube's
# `rollout::apply_all`, what `berth deploy --k8s` runs after its push) against `kubectl
# apply --server-side` of the same objects (berth's rendering, written as one List), side
# by side in one run, on the test control plane: etcd, kube-apiserver and
# kube-controller-manager 1.20 on 127.0.0.1, built by scripts/k8s-envtest (cached under
# /var/cache/berth-k8s) and started by the test harness (crates/berth-kube/tests/common).
#
# Each rep applies into two fresh namespaces, one per tool; the tools alternate which
# goes first. What is timed: berth's apply_all call (in-process, the connection already
# made and the server's version and APIs discovered, as in `berth deploy --k8s`), and
# kubectl's whole process (its own discovery included: that is what a user's
# `kubectl apply --server-side -f` costs; its discovery cache is kept between its runs
# within the bench). Push, build and rollout wait are not in either.
# It prints min and median per case and berth median / kubectl median. The issue's
# target (not asserted): <= 0.5x for both.
#
# Usage: bench/k8s.sh
#   N=50          services
#   REPS=3        reps (fresh namespaces each)
#   PROFILE=dev   cargo profile of the bench binary (release: optimized, slower to build)
#   KUBECTL=path  the kubectl to compare with (default: kubectl in PATH; Debian bookworm's
#                 kubernetes-client package has kubectl 1.20.2, the server's version)
# Needs: the control plane built (scripts/k8s-envtest), kubectl, openssl, curl.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/common.sh
source "$here/common.sh"

N=${N:-50}
REPS=${REPS:-3}
PROFILE=${PROFILE:-dev}
KUBECTL=${KUBECTL:-kubectl}
bins=${BERTH_K8S_BIN:-/var/cache/berth-k8s/current/bin}

command -v "$KUBECTL" >/dev/null || die "no $KUBECTL (set KUBECTL, or apt-get install kubernetes-client)"
for b in etcd kube-apiserver kube-controller-manager; do
	[[ -x $bins/$b ]] || die "$bins/$b is missing: run scripts/k8s-envtest"
done

log "building the bench (profile $PROFILE)"
cd "$repo"
cargo test --profile "$PROFILE" -j 2 -p berth-kube --test bench_apply --no-run >&2
log "N=$N REPS=$REPS; load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
BENCH_N=$N BENCH_REPS=$REPS KUBECTL=$KUBECTL BERTH_TEST_STRICT=1 \
	cargo test --profile "$PROFILE" -j 2 -q -p berth-kube --test bench_apply -- \
	--ignored --nocapture --test-threads 1 2>&1 |
	grep -v '^running 1 test$\|^test result:\|^test apply_50\|^\.$\|^$' ||
	die "the bench failed (see above)"
