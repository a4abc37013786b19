// Plain threads for the shards, the health checker and the admin API: each owns its loop, so
// they are started directly rather than through Dispatch or Swift concurrency.
#if canImport(Glibc)
import Glibc
#endif

/// Why a thread could not be started.
public struct ThreadError: Error, CustomStringConvertible {
    public let errno: Int32
    public var description: String { "pthread_create failed: \(String(cString: strerror(errno)))" }
}

/// Starts `body` on a new thread; join it with pthread_join, or detach it.
public func startThread(_ body: @escaping () -> Void) throws -> pthread_t {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let rc = pthread_create(&thread, nil, { arg in
        Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        throw ThreadError(errno: rc)
    }
    return thread
}

/// Starts `body` on a new detached thread.
public func startDetachedThread(_ body: @escaping () -> Void) throws {
    pthread_detach(try startThread(body))
}
