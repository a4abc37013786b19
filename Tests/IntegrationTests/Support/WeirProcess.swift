// Starts the real `weir` binary with a config file, watches its log, and always stops it.
import Foundation
import Synchronization
import Testing
import WeirCore
import WeirDemo

/// The weir binary built beside this test bundle (or $WEIR_BINARY).
func weirBinary() -> String {
    if let p = ProcessInfo.processInfo.environment["WEIR_BINARY"] { return p }
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    // .../debug/weirPackageTests.xctest -> .../debug/weir
    return exe.deletingLastPathComponent().appendingPathComponent("weir").path
}

/// A loopback port nobody listens on right now, below the ephemeral range (32768-60999): a port
/// from that range can be taken at any moment by an outgoing connection (Weir's own, to its
/// upstreams), so a test that picked one could find it gone. Prefer a listener on port 0 and
/// `WeirProcess.port(_:)`; this remains for addresses that must be known before Weir starts.
/// Tests run in parallel in one process: a port is handed out once, so two tests probing at the
/// same moment cannot both be told the same free port (and one of them find it taken).
let handedOutPorts = Mutex<Set<UInt16>>([])

func freePort() throws -> UInt16 {
    for _ in 0..<200 {
        let port = UInt16.random(in: 20000...32000)
        guard handedOutPorts.withLock({ $0.insert(port).inserted }) else { continue }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { continue }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = loopback(port).withSockAddr { bind(fd, $0, $1) } == 0
        if bound && (try? TestClient(loopback(port), timeoutSeconds: 1)) == nil { return port }
    }
    throw LoopbackError(message: "no free port found below 32768")
}

/// How the tests run Weir, from $WEIR_TEST_IO: unset runs it as it is (io: auto, io_uring here);
/// `epoll` passes `--io epoll`; `denied` starts it under a seccomp filter that denies io_uring, as
/// a default container runtime does, so it must fall back to epoll by itself. The README's test
/// command runs the integration tests both ways.
enum TestIO: String {
    case native, epoll, denied
    static let current = TestIO(rawValue: ProcessInfo.processInfo.environment["WEIR_TEST_IO"] ?? "native") ?? .native
}

/// The seccomp launcher (Support/no_io_uring.py) and the command it runs.
func deniedIoUring(_ command: [String]) -> (executable: String, arguments: [String]) {
    ("/usr/bin/python3", [repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Support/no_io_uring.py").path] + command)
}

final class WeirProcess {
    let process = Process()
    let configPath: String
    let logPath: String
    let directory: URL
    private var stopped = false

    /// Starts `weir run` with `yaml` and waits (up to 15 s) until it says it is running.
    /// `envoyArguments`: start it the way pilot-agent starts Envoy, `weir -c FILE ARGS` (the
    /// file then holds an Envoy bootstrap).
    init(yaml: String, arguments: [String] = [], envoyArguments: [String]? = nil, io: TestIO = .current) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-test-\(UUID().uuidString)")
        directory = dir
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        configPath = dir.appendingPathComponent("weir.yaml").path
        logPath = dir.appendingPathComponent("weir.log").path
        try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let command = envoyArguments.map { [weirBinary(), "-c", configPath] + $0 }
            ?? ([weirBinary(), "run", "--config", configPath] + arguments + (io == .epoll ? ["--io", "epoll"] : []))
        let (executable, args) = io == .denied ? deniedIoUring(command) : (command[0], Array(command.dropFirst()))
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardError = log
        process.standardOutput = log
        try process.run()
        guard waitForLog("running generation", seconds: 15) else {
            stop()
            throw LoopbackError(message: "weir did not start; its log:\n\(self.log)")
        }
        // The matrix checks itself: a run meant for epoll that did not get it fails loudly.
        let backendLine = io == .denied ? "using the epoll backend" : io == .epoll ? "epoll backend (io: epoll)" : nil
        if let backendLine, !self.log.contains(backendLine) {
            stop()
            throw LoopbackError(message: "weir did not say '\(backendLine)'; its log:\n\(self.log)")
        }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits until the log contains `text` `count` times.
    @discardableResult
    func waitForLog(_ text: String, count: Int = 1, seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if log.components(separatedBy: text).count - 1 >= count { return true }
            if !process.isRunning { return log.components(separatedBy: text).count - 1 >= count }
            usleep(20_000)
        }
        return false
    }

    /// The port listener `name` got: a config may say port 0, and Weir logs what it bound
    /// ("listener NAME on ADDRESS (...)"), so tests never race for a free port.
    func port(_ name: String) throws -> UInt16 {
        try loggedPort(after: "listener \(name) on ")
    }

    /// The admin API's port, as logged ("admin API on http://ADDRESS/").
    func adminPort() throws -> UInt16 { try loggedPort(after: "admin API on http://") }

    /// The admin API's address, as logged (its config may say port 0).
    func adminAddress() throws -> SocketAddress {
        let text = log
        guard let r = text.range(of: "admin API on http://") else { throw LoopbackError(message: "no admin API in the log:\n\(text)") }
        return try SocketAddress.parse(String(text[r.upperBound...].prefix { $0 != "/" && $0 != " " && $0 != "\n" }))
    }

    private func loggedPort(after marker: String) throws -> UInt16 {
        let text = log
        guard let r = text.range(of: marker) else { throw LoopbackError(message: "no '\(marker)' in the log:\n\(text)") }
        let rest = text[r.upperBound...].prefix { $0 != " " && $0 != "/" && $0 != "\n" }
        guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]) else {
            throw LoopbackError(message: "no port after '\(marker)' in the log:\n\(text)")
        }
        return port
    }

    func rewrite(_ yaml: String) throws { try yaml.write(toFile: configPath, atomically: true, encoding: .utf8) }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits for the process to exit (up to `seconds`) and returns its status, or nil if it did not.
    func waitForExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// SIGTERM, then SIGKILL if it lingers. Safe to call twice.
    func stop() {
        guard !stopped else { return }
        stopped = true
        if process.isRunning {
            signal(SIGTERM)
            if waitForExit(seconds: 10) == nil { signal(SIGKILL); _ = waitForExit(seconds: 5) }
        }
    }

    /// Tests read the log after stop(), so the files go only when the test lets go of this.
    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Runs `weir` with `arguments` to completion (bounded) and returns its status and output.
func runWeir(_ arguments: [String], seconds: Double = 30) throws -> (status: Int32, output: String) {
    try runCommand(weirBinary(), arguments, seconds: seconds)
}

/// Runs `executable` to completion (bounded) and returns its status and output.
func runCommand(_ executable: String, _ arguments: [String], seconds: Double = 30) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let deadline = Date().addingTimeInterval(seconds)
    var data = Data()
    let reader = pipe.fileHandleForReading
    while p.isRunning && Date() < deadline { data.append(reader.availableData) }
    if p.isRunning { p.terminate(); p.waitUntilExit() }
    data.append(reader.readDataToEndOfFile())
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

func loopback(_ port: UInt16) -> SocketAddress { SocketAddress(ipv4: 127, 0, 0, 1, port: port) }

/// Connects through weir and returns the greeting the upstream sent (its name), or nil.
func greetingThrough(_ address: SocketAddress, length: Int) -> String? {
    guard let c = try? TestClient(address, timeoutSeconds: 5) else { return nil }
    let g = c.read(count: length)
    return g.count == length ? String(decoding: g, as: UTF8.self) : nil
}
