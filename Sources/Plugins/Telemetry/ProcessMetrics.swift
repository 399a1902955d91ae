import Kernel
import NIOConcurrencyHelpers
import Prometheus

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The Prometheus client libraries' standard process metrics (`process_*`) and Istio's
/// `istio_build`, refreshed from `/proc/self` before each scrape.
///
/// swift-metrics no longer ships system metrics, so they are read here. On a system
/// without `/proc` the process gauges stay absent rather than reporting zeros.
///
/// Thread-safe; ``update()`` reads files, so call it off the event loops.
final class ProcessMetrics: Sendable {
    private let cpu: Counter
    private let resident: Gauge
    private let virtual: Gauge
    private let startTime: Gauge
    private let openFDs: Gauge
    private let maxFDs: Gauge
    /// CPU seconds already added to ``cpu``, which can only be incremented.
    private let reportedCPU = NIOLockedValueBox<Double>(0)

    init(registry: PrometheusCollectorRegistry) {
        cpu = registry.makeCounter(
            descriptor: .named("process_cpu_seconds_total", help: "Total user and system CPU time spent in seconds."))
        resident = registry.makeGauge(
            descriptor: .named("process_resident_memory_bytes", help: "Resident memory size in bytes."))
        virtual = registry.makeGauge(
            descriptor: .named("process_virtual_memory_bytes", help: "Virtual memory size in bytes."))
        startTime = registry.makeGauge(
            descriptor: .named("process_start_time_seconds", help: "Start time of the process since unix epoch in seconds."))
        openFDs = registry.makeGauge(
            descriptor: .named("process_open_fds", help: "Number of open file descriptors."))
        maxFDs = registry.makeGauge(
            descriptor: .named("process_max_fds", help: "Maximum number of open file descriptors."))
        // Istio's build gauge: one series whose labels carry the version.
        registry.makeGauge(
            descriptor: .named("istio_build", help: "Istio component build info"),
            labels: [("component", "ambit"), ("tag", AmbitVersion.current)]
        ).set(Double(1))
    }

    /// Reads `/proc/self` and updates every process metric.
    func update() {
        #if os(Linux)
        guard let stat = Self.read("/proc/self/stat"), let close = stat.lastIndex(of: ")") else { return }
        // Fields after the command name (which may contain spaces), from field 3 (state) on.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        func field(_ number: Int) -> Double? { fields.count > number - 3 ? Double(fields[number - 3]) : nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let pageSize = Double(sysconf(Int32(_SC_PAGESIZE)))
        if let user = field(14), let system = field(15), ticks > 0 {
            let total = (user + system) / ticks
            let delta = reportedCPU.withLockedValue { reported -> Double in
                let delta = max(0, total - reported)
                reported += delta
                return delta
            }
            if delta > 0 { cpu.increment(by: delta) }
        }
        if let vsize = field(23) { virtual.set(vsize) }
        if let rss = field(24) { resident.set(rss * pageSize) }
        if let started = field(22), ticks > 0, let boot = Self.bootTime() {
            startTime.set(boot + started / ticks)
        }
        openFDs.set(Double(Self.countOpenFDs()))
        var limit = rlimit()
        if getrlimit(Self.openFilesLimit, &limit) == 0 { maxFDs.set(Double(limit.rlim_cur)) }
        #endif
    }

    #if os(Linux)
    private static let openFilesLimit = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)

    /// System boot time (`btime` in `/proc/stat`), in seconds since the epoch.
    private static func bootTime() -> Double? {
        guard let text = read("/proc/stat") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6))
        }
        return nil
    }

    private static func countOpenFDs() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let isDot = withUnsafeBytes(of: entry.pointee.d_name) { $0.first == UInt8(ascii: ".") }
            if !isDot { count += 1 }
        }
        // The directory stream itself holds a descriptor while we count.
        return max(0, count - 1)
    }

    /// A small text file's contents (procfs files report size 0, so read until EOF).
    private static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = Glibc.read(fd, &buffer, buffer.count)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
    #endif
}
