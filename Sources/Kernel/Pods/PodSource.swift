/// Something that tells the node which pods to capture in their own network namespaces,
/// and hands over each pod's namespace: the local config's `netns` field and the admin
/// server's `/pods` (the `capture` plugin's `source: mesh`), istio-cni's ZDS socket next.
///
/// A source opens (or adopts) each namespace itself and writes the pod into the node's
/// ``CapturedPods`` through the ``PodFeed`` it is given: ``PodFeed/add(_:)`` when a pod
/// arrives, ``PodFeed/remove(uid:)`` when it goes, and a snapshot
/// (``PodFeed/beginSnapshot()`` … ``PodFeed/endSnapshot()``) when it resends everything
/// it knows, so pods it no longer mentions are removed. It never starts listeners: the
/// in-pod servers follow the registry (``PodServerReconciler``), whichever source a pod
/// came from.
public protocol PodSource: Sendable {
    /// The origin its pods carry (``CapturedPods/Pod/origin``), e.g. `config`, `admin`,
    /// `zds`.
    var origin: String { get }

    /// Feeds `feed` until the calling task is cancelled (graceful shutdown). A source that
    /// loses its upstream (the ZDS socket) reconnects on its own and resends a snapshot.
    func run(feeding feed: PodFeed) async
}
