// Logging for rare events (start-up, reloads, health changes, failures), never per request:
// swift-log underneath, so an embedding program can route Weir's logs where it likes; the weir
// command installs LineLogHandler, one line per event with structured key=value metadata.
import Logging
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
    var swiftLog: Logger.Level {
        switch self {
        case .trace: return .trace
        case .debug: return .debug
        case .info: return .info
        case .notice: return .notice
        case .warning: return .warning
        case .error: return .error
        case .critical: return .critical
        }
    }
}

public enum Log {
    /// Set once at startup and on reload; a stale read only changes whether one line prints.
    nonisolated(unsafe) public static var level: LogLevel = .info {
        didSet { logger.logLevel = level.swiftLog }
    }
    nonisolated(unsafe) static var logger = Logger(label: "weir")

    /// Installs the line handler (stderr) for the whole process. Call once, first thing.
    public static func bootstrap() {
        LoggingSystem.bootstrap { label in LineLogHandler(label: label) }
        logger = Logger(label: "weir")
        logger.logLevel = level.swiftLog
    }

    public static func write(_ level: LogLevel, _ message: @autoclosure () -> String, _ metadata: Logger.Metadata = [:]) {
        guard level >= Log.level else { return }
        logger.log(level: level.swiftLog, "\(message())", metadata: metadata.isEmpty ? nil : metadata)
    }

    public static func info(_ m: @autoclosure () -> String, _ metadata: Logger.Metadata = [:]) { write(.info, m(), metadata) }
    public static func warning(_ m: @autoclosure () -> String, _ metadata: Logger.Metadata = [:]) { write(.warning, m(), metadata) }
    public static func error(_ m: @autoclosure () -> String, _ metadata: Logger.Metadata = [:]) { write(.error, m(), metadata) }
    public static func debug(_ m: @autoclosure () -> String, _ metadata: Logger.Metadata = [:]) { write(.debug, m(), metadata) }
}

/// One line per event on stderr: `2026-11-25T15:00:00Z info message key=value key="a b"`.
/// Keys are sorted so lines diff and grep the same way every time.
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public let label: String
    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        var all = metadata
        if let extra { all.merge(extra) { _, new in new } }
        var text = "\(LineLogHandler.timestamp()) \(level) \(message)"
        for key in all.keys.sorted() {
            let value = "\(all[key]!)"
            let quoted = value.isEmpty || value.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" })
            text += " \(key)=" + (quoted ? "\"" + value.replacingQuotes() + "\"" : value)
        }
        fputs(text + "\n", stderr)
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var secs = ts.tv_sec
        gmtime_r(&secs, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(Int(tm.tm_year) + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))Z"
    }
}

extension String {
    func replacingQuotes() -> String {
        var out = ""
        for ch in self { if ch == "\"" || ch == "\\" { out.append("\\") }; out.append(ch) }
        return out
    }
}

/// Monotonic time in nanoseconds; the coarse clock is enough for timeouts and costs no syscall.
@inlinable public func monotonicNanoseconds(coarse: Bool = false) -> Int64 {
    var ts = timespec()
    clock_gettime(coarse ? CLOCK_MONOTONIC_COARSE : CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
