// A small line logger for rare events (startup, reloads, failures): never called per request.
#if canImport(Glibc)
import Glibc
#endif

public enum LogLevel: Int, Sendable, Comparable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
    public init?(name: String) {
        guard let l = LogLevel.allCases.first(where: { "\($0)" == name }) else { return nil }
        self = l
    }
}

public enum Log {
    /// Set once at startup and on reload; a stale read only changes whether one line prints.
    nonisolated(unsafe) public static var level: LogLevel = .info

    public static func write(_ level: LogLevel, _ message: @autoclosure () -> String) {
        guard level >= Log.level else { return }
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var secs = ts.tv_sec
        gmtime_r(&secs, &tm)
        let stamp = "\(Int(tm.tm_year) + 1900)" + "-" + two(Int(tm.tm_mon) + 1) + "-" + two(Int(tm.tm_mday)) + "T"
            + two(Int(tm.tm_hour)) + ":" + two(Int(tm.tm_min)) + ":" + two(Int(tm.tm_sec)) + "Z"
        let line = "\(stamp) \(level) \(message())\n"
        fputs(line, stderr)
    }

    public static func info(_ m: @autoclosure () -> String) { write(.info, m()) }
    public static func warning(_ m: @autoclosure () -> String) { write(.warning, m()) }
    public static func error(_ m: @autoclosure () -> String) { write(.error, m()) }
    public static func debug(_ m: @autoclosure () -> String) { write(.debug, m()) }

    static func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
}

/// Monotonic time in nanoseconds; the coarse clock is enough for timeouts and costs no syscall.
@inlinable public func monotonicNanoseconds(coarse: Bool = false) -> Int64 {
    var ts = timespec()
    clock_gettime(coarse ? CLOCK_MONOTONIC_COARSE : CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
