// Durations and sizes as operators write them in YAML: "500ms", "2s", "1m", "64KiB".

/// Parses "250ms", "2s", "1.5s", "3m", "1h", "100us" into nanoseconds.
public func parseDurationNanoseconds(_ text: String) -> Int64? {
    let units: [(String, Double)] = [("ns", 1), ("us", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
    // Longest suffix first so "ms" is not read as "s".
    for (suffix, scale) in units.sorted(by: { $0.0.count > $1.0.count }) where text.hasSuffix(suffix) {
        let number = text.dropLast(suffix.count)
        guard !number.isEmpty, number.allSatisfy({ $0.isNumber || $0 == "." }),
              let value = Double(number), value >= 0, value * scale < 9.2e18 else { return nil }
        return Int64(value * scale)
    }
    return nil
}

/// Parses "4096", "16KiB", "1MiB", "64KB" (KB = KiB here: buffers are powers of two) into bytes.
public func parseByteSize(_ text: String) -> Int? {
    let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
                                  ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("B", 1)]
    for (suffix, scale) in units where text.hasSuffix(suffix) {
        guard let v = Int(text.dropLast(suffix.count)), v >= 0 else { return nil }
        let (r, overflow) = v.multipliedReportingOverflow(by: scale)
        return overflow ? nil : r
    }
    return Int(text)
}

/// Formats nanoseconds the way the config parser reads them back.
public func formatDuration(nanoseconds ns: Int64) -> String {
    if ns % 3_600_000_000_000 == 0 && ns > 0 { return "\(ns / 3_600_000_000_000)h" }
    if ns % 60_000_000_000 == 0 && ns > 0 { return "\(ns / 60_000_000_000)m" }
    if ns % 1_000_000_000 == 0 { return "\(ns / 1_000_000_000)s" }
    if ns % 1_000_000 == 0 { return "\(ns / 1_000_000)ms" }
    return "\(ns)ns"
}
