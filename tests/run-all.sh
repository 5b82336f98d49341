#!/usr/bin/env bash
# Baton's whole test suite: what CI runs and what the README tells you to run.
# Installs what a fresh machine (Rust toolchain, Python, Java, apt) lacks, then runs
# formatting and lint checks, every crate's tests, and the criterion benches once in test mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# glommio locks memory for its io_uring rings and buffers. Raise the limit for this shell and
# its children (root may go to unlimited; others up to their hard limit). The binaries also
# raise it themselves where they are allowed to.
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
echo "RLIMIT_MEMLOCK: $(ulimit -l)"

# Debian packages: zookeeper (zkCli for compatibility tests, ZooKeeper for baton-bench's
# tests and comparisons), etcd-server (baton-bench's etcd target), etcd-client (etcdctl, for
# the etcd front's compatibility tests), and protoc, which the etcd-client crate's build needs.
missing=()
lean=()
[ -x /usr/share/zookeeper/bin/zkCli.sh ] || missing+=(zookeeper)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler libprotobuf-dev)
# openssl names certificates' subjects as RFC 2253 does, for the TLS tests' x509 ids.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# promtool (Debian's prometheus package, without the server's web assets) checks /metrics.
command -v promtool >/dev/null 2>&1 || lean+=(prometheus)
if [ "${#missing[@]}" -gt 0 ] || [ "${#lean[@]}" -gt 0 ]; then
  apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "${#lean[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
fi

# kazoo and python-etcd3 (Python, from PyPI) for the real-client compatibility tests.
if ! python3 -c "import kazoo" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "kazoo==2.11.0"
fi
if ! PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 -c "import etcd3" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "etcd3==0.12.0"
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# Criterion benches compile and run one iteration each (numbers come from perf/, not CI).
cargo bench -p baton-perf --bench wal_codec --locked -- --test

# One closing line for the whole suite (set -o pipefail already failed the run on a failure).
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "baton: ${passed} passed, ${failed} failed"
