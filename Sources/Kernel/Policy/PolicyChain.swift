public import Logging
import NIOConcurrencyHelpers
public import NIOCore

/// The node's policy chain: every enabled ``ConnectionAuthorizer`` (role
/// ``PluginRole/policy``) in manifest order. The first deny wins and ends the walk;
/// allows and abstentions go on to the next link; a connection no link denies is
/// allowed.
///
/// This is the one call inbound paths make before they dial a workload:
///
/// ```swift
/// let decision = await context.policyChain.authorize(attributes)
/// guard decision.allowed else { /* HBONE: 401; plaintext: close */ }
/// ```
///
/// or, from a channel handler on an event loop,
/// `context.policyChain.authorize(attributes, on: channel.eventLoop)`.
///
/// The shape is a middleware chain (as in Hummingbird) with the continuation implied: a
/// link either stops the chain with a deny or lets it continue, so links need no `next`
/// and cannot forget to call it. A chain with no links allows everything (no policy
/// plugin enabled means no policy).
///
/// Building a chain is cheap (a walk over the enabled plugins); build one per use or
/// keep one. Thread-safe.
public struct PolicyChain: Sendable {
    /// One authorizer and the plugin id that names it in decisions.
    public struct Link: Sendable {
        /// The plugin id, e.g. `authorization`.
        public let id: String
        /// The authorizer.
        public let authorizer: any ConnectionAuthorizer

        /// Creates a link.
        public init(id: String, authorizer: any ConnectionAuthorizer) {
            self.id = id
            self.authorizer = authorizer
        }
    }

    /// The links, in the order they are consulted.
    public let links: [Link]
    /// The decision deadline and failure counts every link is held to.
    public let guardrail: PolicyGuard

    /// A chain of explicit links (tests, composed binaries), held to `guardrail`.
    public init(_ links: [Link], guardrail: PolicyGuard = PolicyGuard()) {
        self.links = links
        self.guardrail = guardrail
    }

    /// Every enabled plugin providing ``ConnectionAuthorizer``, in manifest order, held
    /// to the node's ``PluginContext/policyGuard``. Available from
    /// ``Plugin/provision()`` on (before that the directory is empty).
    public init(context: PluginContext) {
        links = context.providers(of: (any ConnectionAuthorizer).self).map { authorizer in
            let id = (authorizer as? any Plugin).map { type(of: $0).id } ?? String(describing: type(of: authorizer))
            return Link(id: id, authorizer: authorizer)
        }
        guardrail = context.policyGuard
    }

    /// Asks each link in order; returns the first deny, else the last allow, else an
    /// allow saying that nothing objected. The returned decision names its plugin.
    ///
    /// A link that throws or misses the deadline is a deny (see ``PolicyGuard``).
    public func authorize(_ attributes: ConnectionAttributes) async -> AuthorizationDecision {
        var verdicts = Verdicts()
        for link in links {
            if let deny = verdicts.add(await decide(link, attributes), from: link) { return deny }
        }
        return verdicts.outcome(links: links.count)
    }

    /// The chain's decision without suspending, when every link it consults can answer at
    /// once (``ImmediateConnectionAuthorizer``); nil when one of them needs
    /// ``authorize(_:)``. Same rules as ``authorize(_:)``: the first deny wins.
    public func authorizeImmediately(_ attributes: ConnectionAttributes) -> AuthorizationDecision? {
        var verdicts = Verdicts()
        for link in links {
            guard let immediate = link.authorizer as? any ImmediateConnectionAuthorizer,
                let decision = immediate.authorizeImmediately(attributes)
            else { return nil }
            if let deny = verdicts.add(decision, from: link) { return deny }
        }
        return verdicts.outcome(links: links.count)
    }

    /// The chain's rule, shared by both ways of asking: the first deny wins, else the last
    /// allow, else an allow saying that nothing objected. Decisions are named after their
    /// plugin.
    private struct Verdicts {
        private var lastAllow: AuthorizationDecision?

        /// Adds one link's decision; returns it when it ends the chain (a deny).
        mutating func add(_ decision: AuthorizationDecision, from link: Link) -> AuthorizationDecision? {
            var decision = decision
            decision.plugin = link.id
            switch decision.verdict {
            case .deny: return decision
            case .allow: lastAllow = decision
            case .abstain: break
            }
            return nil
        }

        func outcome(links: Int) -> AuthorizationDecision {
            lastAllow ?? .allow(reason: links == 0 ? "no policy plugin enabled" : "no policy plugin objected")
        }
    }

    /// One link's decision, raced against the deadline. The plugin runs in a task of its
    /// own so that a call that never returns can be abandoned: awaiting it here (or in a
    /// task group, which waits for its children) would hold the connection forever.
    private func decide(_ link: Link, _ attributes: ConnectionAttributes) async -> AuthorizationDecision {
        let guardrail = self.guardrail
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<LinkOutcome, Never>) in
            let once = ResumeOnce(continuation)
            let timer = Task {
                try? await Task.sleep(for: guardrail.deadline)
                once.resume(.timedOut)
            }
            let work = Task {
                do {
                    once.resume(.decided(try await link.authorizer.authorize(attributes)))
                } catch {
                    once.resume(.threw(error))
                }
                timer.cancel()
            }
            once.onTimeout { work.cancel() }
        }
        switch outcome {
        case .decided(let decision):
            return decision
        case .threw(let error):
            guardrail.record(plugin: link.id, .threw, detail: "\(error)")
            return .deny(reason: "policy plugin \(link.id) failed: \(error)")
        case .timedOut:
            guardrail.record(plugin: link.id, .timedOut, detail: "no decision within \(ConfigDuration(guardrail.deadline))")
            return .deny(reason: "policy plugin \(link.id) did not decide within \(ConfigDuration(guardrail.deadline))")
        }
    }

    /// ``authorize(_:)`` for event-loop code: the future completes on `eventLoop`.
    public func authorize(_ attributes: ConnectionAttributes, on eventLoop: any EventLoop) -> EventLoopFuture<AuthorizationDecision> {
        if links.isEmpty {
            return eventLoop.makeSucceededFuture(.allow(reason: "no policy plugin enabled"))
        }
        return eventLoop.makeFutureWithTask { await self.authorize(attributes) }
    }

    /// One connection closed by ``reevaluate(_:logger:)``.
    public struct Closed: Sendable {
        /// The connection.
        public let record: ConnectionRecord
        /// The deny that closed it.
        public let decision: AuthorizationDecision
    }

    /// Checks every open connection that was authorized (its record carries
    /// ``ConnectionRecord/authorization``) against the chain again and closes those now
    /// denied. Policy plugins call this after their policies change; each closed
    /// connection is logged with the deciding policy and recorded as the record's
    /// failure with ``ResponseFlag/denied``, so telemetry counts its close as `DENY` (and
    /// failed), as ztunnel reports a connection closed by a policy change.
    @discardableResult
    public func reevaluate(_ registry: ConnectionRegistry, logger: Logger) async -> [Closed] {
        var closed: [Closed] = []
        for record in registry.records {
            guard let attributes = record.authorization else { continue }
            let decision = await authorize(attributes)
            guard !decision.allowed else { continue }
            record.recordFailure("closed on policy change: \(decision)", flag: .denied)
            record.close()
            logger.info(
                "closed an open connection now denied by policy",
                metadata: [
                    "id": "\(record.id)", "source": "\(record.source)", "destination": "\(record.destination)",
                    "policy": "\(decision.policy ?? "-")", "rule": "\(decision.rule.map(String.init) ?? "-")",
                    "plugin": "\(decision.plugin ?? "-")", "reason": "\(decision.reason)",
                ])
            closed.append(Closed(record: record, decision: decision))
        }
        return closed
    }
}

private enum LinkOutcome: Sendable {
    case decided(AuthorizationDecision)
    case threw(any Error)
    case timedOut
}

/// Resumes a continuation with the first outcome only: the plugin's answer and the
/// deadline race, and the loser must be dropped.
private final class ResumeOnce: Sendable {
    private struct State {
        var continuation: CheckedContinuation<LinkOutcome, Never>?
        var cancelPlugin: (@Sendable () -> Void)?
    }

    private let state: NIOLockedValueBox<State>

    init(_ continuation: CheckedContinuation<LinkOutcome, Never>) {
        state = NIOLockedValueBox(State(continuation: continuation, cancelPlugin: nil))
    }

    /// Cancels the plugin's task if the deadline wins (set once the task exists).
    func onTimeout(_ action: @escaping @Sendable () -> Void) {
        let alreadyResumed = state.withLockedValue { state -> Bool in
            if state.continuation == nil { return true }
            state.cancelPlugin = action
            return false
        }
        // Already resumed: cancelling a finished task is harmless, a hung one needs it.
        if alreadyResumed { action() }
    }

    func resume(_ outcome: LinkOutcome) {
        let taken = state.withLockedValue { state -> State in
            let taken = state
            state = State(continuation: nil, cancelPlugin: nil)
            return taken
        }
        guard let continuation = taken.continuation else { return }
        continuation.resume(returning: outcome)
        if case .timedOut = outcome { taken.cancelPlugin?() }
    }
}

extension PluginContext {
    /// The node's policy chain (every enabled policy plugin, in manifest order); see
    /// ``PolicyChain``. Use it from ``Plugin/provision()`` on.
    public var policyChain: PolicyChain { PolicyChain(context: self) }
}
