/// A keyed table of mesh resources that a new snapshot can change in constant time while
/// older snapshots keep their contents: a value type whose entries are spread over
/// 64 × 64 copy-on-write shards in two levels, so one change copies one shard (about
/// `count / 4096` entries) and two lists of 64 references, never the whole table.
///
/// Reads are dictionary lookups. Iteration order is unspecified; sort for output.
public struct ResourceTable<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private static var fanOut: Int { 16 }

    private var groups: [[[Key: Value]]]
    /// The number of entries.
    public private(set) var count: Int

    /// An empty table.
    public init() {
        groups = Array(repeating: Array(repeating: [:], count: Self.fanOut), count: Self.fanOut)
        count = 0
    }

    @inline(__always)
    private static func place(of key: Key) -> (group: Int, shard: Int) {
        // `hashValue` is stable within a process, which is all a snapshot needs.
        let hash = UInt(bitPattern: key.hashValue)
        let fanOut = UInt(Self.fanOut)
        return (Int(hash % fanOut), Int((hash / fanOut) % fanOut))
    }

    /// The entry for `key`; setting nil removes it.
    public subscript(key: Key) -> Value? {
        get {
            let place = Self.place(of: key)
            return groups[place.group][place.shard][key]
        }
        set {
            let place = Self.place(of: key)
            if let newValue {
                if groups[place.group][place.shard].updateValue(newValue, forKey: key) == nil { count += 1 }
            } else if groups[place.group][place.shard].removeValue(forKey: key) != nil {
                count -= 1
            }
        }
    }

    /// Whether the table is empty.
    public var isEmpty: Bool { count == 0 }

    /// Every value (O(count): for listings and reconcilers, not per connection).
    public var values: [Value] {
        var all: [Value] = []
        all.reserveCapacity(count)
        for group in groups {
            for shard in group where !shard.isEmpty { all.append(contentsOf: shard.values) }
        }
        return all
    }

    /// Every key (O(count)).
    public var keys: [Key] {
        var all: [Key] = []
        all.reserveCapacity(count)
        for group in groups {
            for shard in group where !shard.isEmpty { all.append(contentsOf: shard.keys) }
        }
        return all
    }

    /// Every entry (O(count)).
    public var entries: [(key: Key, value: Value)] {
        var all: [(key: Key, value: Value)] = []
        all.reserveCapacity(count)
        for group in groups {
            for shard in group {
                for (key, value) in shard { all.append((key, value)) }
            }
        }
        return all
    }
}
