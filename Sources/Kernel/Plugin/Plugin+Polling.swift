import ServiceLifecycle

extension Plugin {
    /// Calls `body` every `interval` until the node shuts down gracefully (or the task is
    /// cancelled), then returns: the shape of a ``Plugin/run()`` that watches a file or
    /// refreshes a cache. The first call comes after one interval, since
    /// ``Plugin/provision()`` already loaded the initial state.
    ///
    /// Sleeping is cancelled at shutdown, so the node does not wait out an interval.
    public func repeatUntilShutdown(every interval: Duration, _ body: @escaping @Sendable () async -> Void) async {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                await body()
            }
        }
    }
}
