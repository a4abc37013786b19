// The HTTP access log: one JSON line per request, appended to a file through the shard's ring so a
// slow disk never blocks the loop. Each shard has its own pair of buffers per file: lines go into
// one while the other is being written; when both are busy and the open one is full, lines are
// dropped and counted rather than waited for.
import CURing
import WeirConfig
import WeirCore
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

final class AccessLogWriter {
    let path: String
    private(set) var fd: Int32
    let capacity = 256 * 1024
    let buffers: (UnsafeMutableRawPointer, UnsafeMutableRawPointer)
    var filling = 0
    var fill = 0
    /// The buffer being written (the one not filling): its length, and how much is written.
    /// A write may be short (a full disk, a signal): the rest goes out before anything else.
    var writeLength = 0
    var writeDone = 0
    var writing: Bool { writeLength > 0 }
    var dropped = 0
    let id: Int

    init?(path: String, id: Int) {
        guard let fd = AccessLogWriter.open(path) else { return nil }
        self.path = path
        self.fd = fd
        self.id = id
        buffers = (.allocate(byteCount: capacity, alignment: 64), .allocate(byteCount: capacity, alignment: 64))
    }

    static func open(_ path: String) -> Int32? {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            Log.error("cannot open access log \(path): \(String(cString: strerror(errno)))")
            return nil
        }
        return fd
    }

    deinit {
        close(fd)
        buffers.0.deallocate()
        buffers.1.deallocate()
    }

    var idle: Bool { !writing && fill == 0 }

    /// Room for a line of up to `count` bytes in the open buffer, or nil (the line is dropped).
    func reserve(_ count: Int) -> UnsafeMutableRawPointer? {
        guard fill + count <= capacity else { dropped += 1; return nil }
        return (filling == 0 ? buffers.0 : buffers.1) + fill
    }

    func commit(_ count: Int) { fill += count }

    /// Starts writing the open buffer if none is being written; called once per loop turn.
    func flush<IO: IOBackend>(_ ring: IO) {
        guard !writing, fill > 0 else { return }
        writeLength = fill
        writeDone = 0
        filling ^= 1
        fill = 0
        submit(ring)
    }

    private func submit<IO: IOBackend>(_ ring: IO) {
        let base = filling == 0 ? buffers.1 : buffers.0
        ring.append(fd: fd, from: base + writeDone, count: UInt32(writeLength - writeDone),
                    userData: UserData(op: Op.logWrite, slot: id, generation: 0))
    }

    func written<IO: IOBackend>(_ res: Int32, ring: IO) {
        if res < 0 {
            Log.warning("access log \(path): write failed: \(String(cString: strerror(-res))); \(writeLength - writeDone) bytes lost")
        } else if res > 0 && writeDone + Int(res) < writeLength {
            writeDone += Int(res)
            return submit(ring)
        } else if res == 0 {
            Log.warning("access log \(path): the write made no progress; \(writeLength - writeDone) bytes lost")
        }
        writeLength = 0
        writeDone = 0
        if rotationCheckDue { checkRotation() }
    }

    /// A rotation check was asked for while a write held the descriptor.
    private var rotationCheckDue = false

    /// Follows log rotation, asked once per tick: when the file at `path` is no longer the one
    /// open (renamed or removed, as logrotate does), opens `path` anew. A write in flight still
    /// uses the descriptor, so then the check waits for its completion (`written`).
    func checkRotation() {
        guard !writing else { rotationCheckDue = true; return }
        rotationCheckDue = false
        var open = stat(), named = stat()
        guard fstat(fd, &open) == 0 else { return }
        if stat(path, &named) == 0 && named.st_ino == open.st_ino && named.st_dev == open.st_dev { return }
        guard let fresh = AccessLogWriter.open(path) else { return }
        close(fd)
        fd = fresh
    }
}

/// Appends JSON text into a fixed buffer without allocating.
struct LineWriter {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    var count = 0

    mutating func byte(_ b: UInt8) {
        guard count < capacity else { return }
        base.storeBytes(of: b, toByteOffset: count, as: UInt8.self)
        count += 1
    }
    mutating func raw(_ s: StaticString) {
        for i in 0..<s.utf8CodeUnitCount { byte(s.utf8Start[i]) }
    }
    mutating func number(_ v: Int64) {
        var v = v
        if v < 0 { byte(UInt8(ascii: "-")); v = -v }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat { d[n] = UInt8(48 + v % 10); v /= 10; n += 1 } while v > 0 && n < 20
        }
        withUnsafeBytes(of: digits) { d in for i in stride(from: n - 1, through: 0, by: -1) { byte(d[i]) } }
    }
    mutating func padded(_ v: Int, _ width: Int) {
        var div = 1
        for _ in 1..<width { div *= 10 }
        var v = v
        while div > 0 { byte(UInt8(48 + (v / div) % 10)); v %= max(div, 1); div /= 10 }
    }
    /// A JSON string from raw bytes: quotes, backslashes and control bytes escaped, at most
    /// `limit` bytes written in all. A string cut short is cut between escapes, never inside
    /// one, and always closed, so the line stays valid JSON.
    mutating func string(_ bytes: UnsafeRawBufferPointer, limit: Int) {
        let end = min(capacity, count + limit) - 1  // room for the closing quote
        guard count + 2 <= end + 1 else { return }
        byte(UInt8(ascii: "\""))
        let hex: StaticString = "0123456789abcdef"
        for b in bytes {
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                guard count + 2 <= end else { break }
                byte(UInt8(ascii: "\\")); byte(b); continue
            case 0..<0x20, 0x7F:
                guard count + 6 <= end else { break }
                raw("\\u00")
                byte(hex.utf8Start[Int(b >> 4)]); byte(hex.utf8Start[Int(b & 15)]); continue
            default:
                guard count + 1 <= end else { break }
                byte(b); continue
            }
            break
        }
        byte(UInt8(ascii: "\""))
    }
    /// The current UTC time as ISO 8601 with milliseconds.
    mutating func time() {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = time_t(ts.tv_sec)
        var parts = tm()
        gmtime_r(&t, &parts)
        byte(UInt8(ascii: "\""))
        padded(Int(parts.tm_year) + 1900, 4); byte(UInt8(ascii: "-")); padded(Int(parts.tm_mon) + 1, 2); byte(UInt8(ascii: "-"))
        padded(Int(parts.tm_mday), 2); byte(UInt8(ascii: "T")); padded(Int(parts.tm_hour), 2); byte(UInt8(ascii: ":"))
        padded(Int(parts.tm_min), 2); byte(UInt8(ascii: ":")); padded(Int(parts.tm_sec), 2); byte(UInt8(ascii: "."))
        padded(Int(ts.tv_nsec / 1_000_000), 3); raw("Z\"")
    }
}

extension Shard {
    static var logScratchBytes: Int { 512 }

    /// Opens the access logs the snapshot's HTTP listeners name (once per file per shard).
    func adoptAccessLog(_ next: Snapshot) {
        listenerLog = next.listeners.map { l in
            guard let path = l.http?.accessLog else { return -1 }
            if let w = logWriters.first(where: { $0.path == path }) { return w.id }
            guard let w = AccessLogWriter(path: path, id: logWriters.count) else { return -1 }
            logWriters.append(w)
            if logScratch == nil {
                logScratch = .allocate(byteCount: limits.maxConnectionsPerShard * Shard.logScratchBytes, alignment: 8)
            }
            return w.id
        }
    }

    /// The access log of a connection's listener, in the snapshot the connection is on (which
    /// may be older than the shard's: a reload or a health change mid-request publishes one).
    func logWriter(_ c: UnsafeMutablePointer<Connection>) -> AccessLogWriter? {
        let li = Int(c.pointee.listenerIndex)
        guard logScratch != nil, li >= 0 else { return nil }
        let snap = snapshotOf(c)
        if snap === snapshot { return li < listenerLog.count && listenerLog[li] >= 0 ? logWriters[listenerLog[li]] : nil }
        guard li < snap.listeners.count, let path = snap.listeners[li].http?.accessLog else { return nil }
        return logWriters.first { $0.path == path }
    }

    /// Keeps the method and target of a request for its log line (the head buffer may be gone
    /// by the time the response ends). Both fit the slot's scratch whole, escapes included.
    func keepForLog(_ c: UnsafeMutablePointer<Connection>, _ source: UnsafeRawBufferPointer, method: ByteRangeLike, target: ByteRangeLike) {
        guard let scratch = logScratch, logWriter(c) != nil else { return }
        var w = LineWriter(base: scratch + slot(of: c) * Shard.logScratchBytes, capacity: Shard.logScratchBytes)
        w.raw(",\"method\":")
        w.string(UnsafeRawBufferPointer(rebasing: source[method.start..<method.end]), limit: 40)
        w.raw(",\"path\":")
        w.string(UnsafeRawBufferPointer(rebasing: source[target.start..<target.end]), limit: Shard.logScratchBytes - 60)
        c.pointee.logLength = Int16(w.count)
    }

    /// Room one access log line may take: every string in it has a budget within this.
    static var logLineBytes: Int { 1536 }

    func logRequest(_ c: UnsafeMutablePointer<Connection>, status: Int, elapsed: Int64) {
        guard let scratch = logScratch, let writer = logWriter(c), let line = writer.reserve(Shard.logLineBytes) else { return }
        let snap = snapshotOf(c)
        var w = LineWriter(base: line, capacity: Shard.logLineBytes)
        w.raw("{\"time\":"); w.time()
        w.raw(",\"listener\":"); snap.listeners[Int(c.pointee.listenerIndex)].name.utf8.withContiguousStorageIfAvailable { w.string(UnsafeRawBufferPointer($0), limit: 200) }
        w.raw(",\"client\":"); w.string(clientAddress(c), limit: 64)
        let kept = Int(c.pointee.logLength)
        for i in 0..<kept { w.byte(scratch.load(fromByteOffset: slot(of: c) * Shard.logScratchBytes + i, as: UInt8.self)) }
        w.raw(",\"status\":"); w.number(Int64(status))
        w.raw(",\"request_bytes\":"); w.number(c.flow(0).pointee.bytes - c.pointee.logBytesIn)
        w.raw(",\"response_bytes\":"); w.number(c.flow(1).pointee.bytes - c.pointee.logBytesOut)
        if c.pointee.endpointSlot >= 0 {
            let ci = Int(c.pointee.clusterIndex), ep = Int(c.pointee.endpointIndex)
            w.raw(",\"cluster\":"); snap.clusters[ci].name.utf8.withContiguousStorageIfAvailable { w.string(UnsafeRawBufferPointer($0), limit: 200) }
            w.raw(",\"upstream\":")
            if snap === snapshot, ci < endpointText.count, ep < endpointText[ci].count {
                endpointText[ci][ep].withUnsafeBytes { w.string($0, limit: 64) }
            } else {
                // A connection on an older snapshot: its endpoint's text is not kept (rare; allocates).
                var text = snap.clusters[ci].endpoints[ep].address.description
                text.withUTF8 { w.string(UnsafeRawBufferPointer($0), limit: 64) }
            }
        }
        w.raw(",\"retries\":"); w.number(Int64(c.pointee.ex.retries))
        w.raw(",\"duration_us\":"); w.number(elapsed / 1000)
        w.raw("}\n")
        writer.commit(w.count)
        c.pointee.logBytesIn = c.flow(0).pointee.bytes
        c.pointee.logBytesOut = c.flow(1).pointee.bytes
    }
}

/// Offsets of a field in a head, as plain Ints.
struct ByteRangeLike {
    var start: Int
    var end: Int
}
