import NIOConcurrencyHelpers

/// Objects one node's plugins share that the plugin API does not define itself: a role
/// module's registry (the node proxy's captured pods), created on first use, one per node
/// and type.
///
/// A module that defines such an object exposes it as an extension property on
/// ``PluginContext`` that calls ``shared(_:make:)``, so every plugin of the node gets the
/// same instance and the plugin API does not depend on the module.
///
/// Thread-safe.
public final class NodeFacilities: Sendable {
    private let box = NIOLockedValueBox<[ObjectIdentifier: any Sendable]>([:])

    /// An empty set (the runtime makes one per node; tests may too).
    public init() {}

    /// The node's `T`, made by `make` the first time it is asked for.
    public func shared<T: Sendable>(_ type: T.Type, make: () -> T) -> T {
        box.withLockedValue { objects in
            if let existing = objects[ObjectIdentifier(type)] as? T { return existing }
            let made = make()
            objects[ObjectIdentifier(type)] = made
            return made
        }
    }

    /// The node's `T` if something made it already.
    public func existing<T: Sendable>(_ type: T.Type) -> T? {
        box.withLockedValue { $0[ObjectIdentifier(type)] as? T }
    }
}
