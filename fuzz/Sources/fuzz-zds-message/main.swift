import Foundation
import FuzzSupport

// libFuzzer never passes a null pointer with a non-zero size; an empty input may come as null.
exit(runFuzzer { data, size in data.map { fuzz($0, size) } ?? 0 })
