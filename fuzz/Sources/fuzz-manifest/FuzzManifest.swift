import Authorization
import Capture
import FuzzSupport
import AmbitRuntime
import HBONE
import NodeProxy
import Kernel
import LocalConfig
import Telemetry

/// The first-party plugins but `certificates` and `ca-server` (see Package.swift), so
/// each one's config decoder is reached.
private let registry = PluginRegistry([
    PluginType(LocalConfigPlugin.self), PluginType(CapturePlugin.self), PluginType(AuthorizationPlugin.self),
    PluginType(TelemetryPlugin.self), PluginType(HBONEPlugin.self), PluginType(NodeProxyPlugin.self),
])

/// The manifest loader (YAML → sections → plugin configs) over arbitrary text.
///
/// Invariants: it returns a plan or throws ``ConfigErrors`` with at least one error, each
/// naming the file; it never crashes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: fuzzBytes(data, size), as: UTF8.self)
    do {
        let plan = try ManifestLoader.load(
            yaml: text, file: "fuzz.yaml", baseDirectory: "/nonexistent-ambit-fuzz", registry: registry)
        invariant(plan.entries.count == plan.manifest.plugins.count, "plan entries differ from manifest plugins")
    } catch {
        invariant(!error.errors.isEmpty, "ConfigErrors without an error")
        for item in error.errors { invariant(!item.file.isEmpty, "error without a file: \(item)") }
        _ = "\(error)"
    }
    return 0
}
