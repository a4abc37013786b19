// health_check, outlier_detection and panic_threshold in the config, compiled to a HealthPolicy.
import WeirCore
import WeirHealth

extension Compiler {
    static func compileHealth(_ c: ClusterDocument, name: String, fail: (SourcePosition, String) -> Void) -> HealthPolicy? {
        var p = HealthPolicy()
        var ok = true
        func bad(_ v: Located<String>, _ m: String) { fail(v.position, "cluster '\(name)': \(m)"); ok = false }
        func duration(_ v: Located<String>, _ key: String, _ range: ClosedRange<Int64>) -> Int64? {
            guard let ns = parseDurationNanoseconds(v.value), range.contains(ns) else {
                bad(v, "health \(key) must be a duration from \(formatDuration(nanoseconds: range.lowerBound)) to \(formatDuration(nanoseconds: range.upperBound))")
                return nil
            }
            return ns
        }
        func count(_ v: Located<String>, _ key: String, _ range: ClosedRange<Int>) -> Int? {
            guard let n = Int(v.value.hasSuffix("%") ? String(v.value.dropLast()) : v.value), range.contains(n) else {
                bad(v, "\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound)"); return nil
            }
            return n
        }
        if let h = c.healthCheck {
            let kind = h["type"]?.value ?? "tcp"
            if let v = h["interval"], let ns = duration(v, "interval", 10_000_000...3_600_000_000_000) { p.intervalNanoseconds = ns }
            if let v = h["timeout"], let ns = duration(v, "timeout", 1_000_000...300_000_000_000) { p.timeoutNanoseconds = ns }
            if let v = h["unhealthy_interval"], let ns = duration(v, "unhealthy_interval", 10_000_000...3_600_000_000_000) { p.unhealthyIntervalNanoseconds = ns }
            if let v = h["jitter"], let n = count(v, "jitter", 0...50) { p.jitterFraction = Double(n) / 100 }
            if let v = h["unhealthy_threshold"], let n = count(v, "unhealthy_threshold", 1...100) { p.unhealthyThreshold = n }
            if let v = h["healthy_threshold"], let n = count(v, "healthy_threshold", 1...100) { p.healthyThreshold = n }
            if let v = h["port"], let n = count(v, "port", 1...65535) { p.portOverride = UInt16(n) }
            if let v = h["initial"] {
                switch v.value {
                case "healthy": p.startHealthy = true
                case "unhealthy": p.startHealthy = false
                default: bad(v, "initial must be healthy or unhealthy")
                }
            }
            if p.timeoutNanoseconds >= p.intervalNanoseconds, let v = h["timeout"] { bad(v, "health timeout must be shorter than interval") }
            switch kind {
            case "tcp":
                for key in ["path", "host", "expect_status"] where h[key] != nil { bad(h[key]!, "health_check '\(key)' is for type http") }
                p.probe = .tcp(send: Array((h["send"]?.value ?? "").utf8), expect: Array((h["expect"]?.value ?? "").utf8))
            case "http":
                for key in ["send", "expect"] where h[key] != nil { bad(h[key]!, "health_check '\(key)' is for type tcp") }
                let path = h["path"]?.value ?? "/"
                if !path.hasPrefix("/") || path.contains(where: { $0 == " " || $0.asciiValue.map { $0 < 0x21 || $0 > 0x7E } ?? true }) {
                    bad(h["path"]!, "health_check path must start with / and hold no spaces or control characters")
                }
                var ranges: [ClosedRange<Int>] = []
                for item in (h["expect_status"]?.value ?? "200-299").split(separator: ",") {
                    let parts = item.split(separator: "-").map { Int($0.filter { $0 != " " }) }
                    if parts.count == 1, let a = parts[0], (100...599).contains(a) { ranges.append(a...a) }
                    else if parts.count == 2, let a = parts[0], let b = parts[1], (100...599).contains(a), (a...599).contains(b) { ranges.append(a...b) }
                    else { bad(h["expect_status"]!, "expect_status items are codes or ranges like 200 or 200-299, not '\(item)'") }
                }
                p.probe = .http(path: path, host: h["host"]?.value, expectStatus: ranges)
            default:
                bad(h["type"]!, "health_check type must be tcp or http")
            }
        }
        if let o = c.outlierDetection {
            p.consecutiveFailures = 5
            if let v = o["consecutive_failures"], let n = count(v, "consecutive_failures", 1...1000) { p.consecutiveFailures = n }
            if let v = o["base_ejection_time"], let ns = duration(v, "base_ejection_time", 1_000_000...3_600_000_000_000) { p.baseEjectionNanoseconds = ns }
            if let v = o["max_ejection_percent"], let n = count(v, "max_ejection_percent", 0...100) { p.maxEjectionPercent = n }
        }
        if let v = c.panicThreshold, let n = count(v, "panic_threshold", 0...100) { p.panicThresholdPercent = n }
        return ok ? p : nil
    }
}

