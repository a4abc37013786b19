// Start-up checks of kernel features Weir uses when present.
import CURing
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

extension Ring {
    /// Whether this kernel ends a multishot recv at a byte limit (sqe optlen, Linux 6.16+).
    /// Checked on a socket pair: 4 KiB waiting, a 1 KiB limit, and the recv must end after 1 KiB.
    public static func probeRecvLimit() -> Bool {
        guard let ring = try? Ring(entries: 8),
              let buffers = try? BufferRing(ring: ring, group: 1, count: 16, bufferBytes: 512) else { return false }
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { return false }
        defer { Glibc.close(fds[0]); Glibc.close(fds[1]) }
        let payload = [UInt8](repeating: 1, count: 4096)
        guard payload.withUnsafeBytes({ write(fds[1], $0.baseAddress, $0.count) }) == 4096 else { return false }
        ring.recvMultishot(fd: fds[0], group: buffers.group, limitBytes: 1024, userData: UserData(raw: 1))
        var received = 0
        var ended = false
        let deadline = monotonicNanoseconds() + 1_000_000_000
        while !ended && monotonicNanoseconds() < deadline {
            _ = ring.submitAndWait(timeoutNanoseconds: 50_000_000)
            _ = ring.forEachCompletion { _, res, flags in
                if res > 0 { received += Int(res) } else { ended = true }
                if !hasMore(flags: flags) { ended = true }
            }
        }
        return ended && received == 1024
    }
}
