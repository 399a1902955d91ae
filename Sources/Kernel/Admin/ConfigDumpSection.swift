/// A plugin that adds a section of its own to the node's `/config_dump`, e.g. the `xds`
/// plugin's connection state.
///
/// The node encodes ``configDumpSection()`` as JSON under the top-level key
/// ``configDumpKey``, next to the kernel's keys (`workloads`, `services`, `plugins`…),
/// which a section must not reuse (a clashing section is left out). Called from the
/// admin server on every request, from any thread: return a snapshot, quickly.
public protocol ConfigDumpSectionProvider: AnyObject, Sendable {
    /// The section's top-level key, e.g. `xds`.
    var configDumpKey: String { get }
    /// The section's current content.
    func configDumpSection() -> any Encodable & Sendable
}
