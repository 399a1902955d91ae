#!/usr/bin/env bash
# Regenerates Sources/IstioCAAPI/*.pb.swift and *.grpc.swift from istio-ca.proto.
# The output is committed: CI and normal builds never run protoc or the protobuf
# build plugin (which would compile protobuf's C++ for many minutes).
#
# Needs: protoc (apt-get install protobuf-compiler; it ships google/protobuf/*.proto),
# and the two code generators, built here from the package's own dependencies so
# their versions match the runtime libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v protoc >/dev/null || { echo "protoc not found: apt-get install -y protobuf-compiler" >&2; exit 1; }

swift build --product protoc-gen-swift
swift build --product protoc-gen-grpc-swift-2
bin="$(swift build --show-bin-path)"

out=Sources/IstioCAAPI
protoc \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift="$bin/protoc-gen-grpc-swift-2" \
  --proto_path="$out" \
  --swift_out="$out" --swift_opt=Visibility=Public \
  --grpc-swift_out="$out" --grpc-swift_opt=Visibility=Public,Client=true,Server=true \
  "$out/istio-ca.proto"
echo "generated: $(ls "$out"/*.swift | tr '\n' ' ')"
