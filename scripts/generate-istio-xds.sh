#!/usr/bin/env bash
# Regenerates Sources/IstioXDSAPI/**/*.pb.swift and xds.grpc.swift from the .proto files
# beside them: istio's Workload API (workload.proto, authorization.proto, vendored from
# istio/ztunnel's proto/ with their license header; zds.proto is istio-cni's ZDS, also
# from there) and the subset of Envoy's delta xDS
# they travel in (xds.proto, google/rpc/status.proto).
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

out=Sources/IstioXDSAPI
# Messages for every file; the gRPC client and server only for the file with the service.
protoc \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --proto_path="$out" \
  --swift_out="$out" --swift_opt=Visibility=Public \
  "$out/workload.proto" "$out/authorization.proto" "$out/zds.proto" "$out/xds.proto" "$out/google/rpc/status.proto"
protoc \
  --plugin=protoc-gen-grpc-swift="$bin/protoc-gen-grpc-swift-2" \
  --proto_path="$out" \
  --grpc-swift_out="$out" --grpc-swift_opt=Visibility=Public,Client=true,Server=true \
  "$out/xds.proto"
echo "generated: $(find "$out" -name '*.swift' | sort | tr '\n' ' ')"
