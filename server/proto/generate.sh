#!/bin/sh
# Regenerates server/src/etcd/pb/*.rs from the protos beside this script (etcd's
# api/etcdserverpb/rpc.proto, api/mvccpb/kv.proto, api/authpb/auth.proto, v3.5, and v3.4's v3lockpb and v3electionpb, Apache-2.0,
# with gogoproto and grpc-gateway annotations left out). The output is checked in so that
# building Baton needs no protobuf compiler; this needs protoc (Debian: protobuf-compiler).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../src/etcd/pb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "baton-pbgen"
version = "0.1.0"
edition = "2021"
[build-dependencies]
tonic-build = { version = "=0.13.1", default-features = false, features = ["prost"] }
TOML
cat > "$work/build.rs" <<RS
fn main() {
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .bytes([".mvccpb.KeyValue"])
        .out_dir("$out")
        .compile_protos(&["$here/rpc.proto", "$here/kv.proto", "$here/auth.proto", "$here/v3lock.proto", "$here/v3election.proto"], &["$here"])
        .expect("protos compile");
}
RS
echo 'fn main() {}' > "$work/src/main.rs"
cargo build --quiet --manifest-path "$work/Cargo.toml"
echo "generated: $(ls "$out")"
