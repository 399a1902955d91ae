#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CAmbitSystem
import NIOConcurrencyHelpers
public import Kernel

/// A Linux network namespace the proxy opens sockets in: a pod's, for in-pod capture.
///
/// The proxy itself stays in its own (the node's) namespace. A socket belongs to the
/// namespace of the thread that created it, for its whole life, so the proxy enters the
/// pod's namespace on the current thread (`setns(2)`) only for the `socket(2)` call and
/// returns at once; binding, connecting and all I/O then happen on the node's event loops
/// like any other socket. Listeners and dialers take a namespace in their options
/// (``ListenerOptions/namespace``, ``DialerOptions/namespace``).
///
/// Opening a namespace keeps a file descriptor to it, which keeps the namespace alive
/// even after its name is removed (`ip netns del`); ``isStillMounted`` tells whether the
/// path still names the same namespace, so an owner can notice a pod that went away and
/// release it with ``close()``.
///
/// Thread-safe. Needs `CAP_SYS_ADMIN` (root) and Linux.
public final class NetworkNamespace: NetworkNamespaceHandle {
    /// The path it was opened from, e.g. `/var/run/netns/pod-a`; for one adopted from a
    /// descriptor, the name it was given (there is no path to look at again).
    public let path: String
    /// Whether it was adopted from a descriptor handed over (istio-cni's ZDS sends each
    /// pod's namespace that way) rather than opened from a path.
    public let adoptedFromDescriptor: Bool
    /// `SO_MARK` for every proxy socket in this namespace (in-pod capture: `0x539`), so the
    /// namespace's redirect rules never capture the proxy's own traffic. Listener and
    /// dialer options without a mark of their own use it.
    public let mark: UInt32?
    private let handle: NIOLockedValueBox<Int32>
    private let inode: FileIdentity

    /// Opens the namespace at `path`.
    ///
    /// - Throws: ``SocketError`` (``SocketError/Code/bindFailed``) naming the path when it
    ///   cannot be opened or is not a network namespace.
    public init(path: String, mark: UInt32? = nil) throws {
        #if os(Linux)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw SocketError(
                code: .bindFailed, message: "cannot open network namespace \(path): \(Self.errnoText())")
        }
        guard let identity = FileIdentity(fd: fd) else {
            let text = Self.errnoText()
            Glibc.close(fd)
            throw SocketError(code: .bindFailed, message: "cannot stat network namespace \(path): \(text)")
        }
        // The nsfs file system: a regular file bind-mounted from /proc/<pid>/ns/net is not
        // a namespace, and setns would fail later with a less clear error.
        let magic = ambit_fs_magic(fd)
        if magic != -1, UInt(bitPattern: magic) != Self.nsfsMagic {
            Glibc.close(fd)
            throw SocketError(code: .bindFailed, message: "\(path) is not a network namespace (not on nsfs)")
        }
        self.path = path
        self.adoptedFromDescriptor = false
        self.mark = mark
        self.handle = NIOLockedValueBox(fd)
        self.inode = identity
        #else
        throw SocketError(code: .bindFailed, message: "network namespaces exist on Linux only (\(path))")
        #endif
    }

    /// Takes ownership of `descriptor`, an open network-namespace file (as istio-cni's ZDS
    /// hands one over with each pod, or `/proc/<pid>/ns/net` opened by the caller): the
    /// namespace closes it. `name` stands for the path in logs and ``description``.
    ///
    /// - Throws: ``SocketError`` (``SocketError/Code/bindFailed``) when the descriptor is
    ///   not open or not a network namespace; the descriptor is closed then too, so a
    ///   caller never leaks one.
    public init(adopting descriptor: Int32, name: String, mark: UInt32? = nil) throws {
        #if os(Linux)
        guard descriptor >= 0, let identity = FileIdentity(fd: descriptor) else {
            let text = Self.errnoText()
            if descriptor >= 0 { Glibc.close(descriptor) }
            throw SocketError(code: .bindFailed, message: "cannot use descriptor \(descriptor) for \(name) as a network namespace: \(text)")
        }
        let magic = ambit_fs_magic(descriptor)
        guard magic != -1, UInt(bitPattern: magic) == Self.nsfsMagic else {
            Glibc.close(descriptor)
            throw SocketError(code: .bindFailed, message: "descriptor \(descriptor) for \(name) is not a network namespace (not on nsfs)")
        }
        // nsfs holds every kind of namespace: a mount or PID namespace must not pass.
        let kind = ambit_namespace_type(descriptor)
        if kind >= 0, kind != ambit_clone_newnet() {
            Glibc.close(descriptor)
            throw SocketError(
                code: .bindFailed,
                message: "descriptor \(descriptor) for \(name) is a namespace of another kind (type 0x\(String(kind, radix: 16))), not a network namespace")
        }
        self.path = name
        self.adoptedFromDescriptor = true
        self.mark = mark
        self.handle = NIOLockedValueBox(descriptor)
        self.inode = identity
        #else
        throw SocketError(code: .bindFailed, message: "network namespaces exist on Linux only (\(name))")
        #endif
    }

    deinit {
        let fd = handle.withLockedValue { $0 }
        #if os(Linux)
        if fd >= 0 { Glibc.close(fd) }
        #endif
    }

    public var description: String { "netns \(path)" }

    /// True while `path` still names this namespace (same device and inode). False once the
    /// namespace was deleted or its name reused for another one. Always true for one
    /// adopted from a descriptor: it has no path, and its owner says when the pod goes.
    public var isStillMounted: Bool {
        if adoptedFromDescriptor { return true }
        #if os(Linux)
        var info = stat()
        guard stat(path, &info) == 0 else { return false }
        return FileIdentity(info) == inode
        #else
        return false
        #endif
    }

    /// True when `other` is the same namespace (the same nsfs inode), whatever its path.
    public func isSame(as other: NetworkNamespace) -> Bool { inode == other.inode }

    public func isSame(as other: any NetworkNamespaceHandle) -> Bool {
        (other as? NetworkNamespace).map { isSame(as: $0) } ?? false
    }

    /// The error for a namespace handle some other code made: sockets go only into
    /// namespaces this runtime opened and holds a descriptor for.
    static func notOpenedHere(_ handle: any NetworkNamespaceHandle) -> SocketError {
        SocketError(code: .bindFailed, message: "\(handle) was not opened by this node's runtime")
    }

    /// Releases the descriptor; sockets already created in the namespace keep working, new
    /// ones fail. Idempotent.
    public func close() {
        let fd = handle.withLockedValue { fd in
            defer { fd = -1 }
            return fd
        }
        #if os(Linux)
        if fd >= 0 { Glibc.close(fd) }
        #endif
    }

    /// Creates a socket inside this namespace: enters it on the current thread, calls
    /// `socket(2)` and returns to the namespace the thread was in.
    ///
    /// - Returns: the new descriptor, non-blocking and close-on-exec.
    public func makeSocket(domain: Int32, type: Int32, protocol: Int32 = 0) throws -> Int32 {
        #if os(Linux)
        return try handle.withLockedValue { fd -> Int32 in
            guard fd >= 0 else {
                throw SocketError(code: .bindFailed, message: "network namespace \(path) was released")
            }
            guard let home = Self.home else {
                throw SocketError(
                    code: .bindFailed, message: "cannot open the proxy's own network namespace (/proc/self/ns/net)")
            }
            guard ambit_setns_net(fd) == 0 else {
                throw SocketError(
                    code: .bindFailed,
                    message: "cannot enter network namespace \(path): \(Self.errnoText()) (needs CAP_SYS_ADMIN)")
            }
            let socketFD = Glibc.socket(domain, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), `protocol`)
            let socketErrno = errno
            // Returning cannot fail for a namespace we were just in; if it did, this thread
            // would serve every later connection from the wrong namespace.
            guard ambit_setns_net(home) == 0 else {
                fatalError("cannot return from network namespace \(path) to the thread's own: \(Self.errnoText())")
            }
            guard socketFD >= 0 else {
                throw SocketError(
                    code: .bindFailed,
                    message: "cannot create a socket in network namespace \(path): \(String(cString: strerror(socketErrno)))")
            }
            return socketFD
        }
        #else
        throw SocketError(code: .bindFailed, message: "network namespaces exist on Linux only")
        #endif
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }

    /// The proxy's own namespace, which every thread returns to after making a socket:
    /// opened once (threads only ever leave it for the length of a `socket(2)` call).
    private static let home: Int32? = {
        #if os(Linux)
        let fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)
        return fd >= 0 ? fd : nil
        #else
        return nil
        #endif
    }()

    /// NSFS_MAGIC from linux/magic.h.
    private static let nsfsMagic: UInt = 0x6e73_6673
}

/// A file's device and inode: what identifies a namespace.
struct FileIdentity: Equatable, Sendable {
    let device: UInt64
    let inode: UInt64

    #if os(Linux)
    init(_ info: stat) {
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
    }

    init?(fd: Int32) {
        var info = stat()
        guard fstat(fd, &info) == 0 else { return nil }
        self.init(info)
    }
    #endif
}
