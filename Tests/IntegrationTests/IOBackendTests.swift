// The I/O backends as an operator meets them: where a seccomp filter denies io_uring (Docker 25+,
// containerd 2.0 defaults), Weir says so in one line and serves on epoll; asked for io_uring
// there, it refuses to start and says why. (The whole integration suite also runs under the
// same filter: WEIR_TEST_IO=denied, see the README's test command.)
import Foundation
import Testing
import WeirCore
import WeirDemo

@Suite struct IOBackendTests {
    @Test func whereSeccompDeniesIoUringWeirFallsBackToEpollAndServes() throws {
        let echo = try EchoServer(name: "echo")
        let web = try HTTPUpstream(name: "web")
        let yaml = httpConfig(port: 0, upstreams: [web], extraClusters: """
          - name: raw
            connect_timeout: 1s
            endpoints: [{ address: "\(echo.address)" }]
        """).replacingOccurrences(of: "listeners:\n", with: """
        listeners:
          - { name: tcp, address: "127.0.0.2:0", protocol: tcp, cluster: raw }

        """)
        let weir = try WeirProcess(yaml: yaml, io: .denied)
        defer { weir.stop(); echo.stop() }
        let fallback = weir.log.split(separator: "\n").filter { $0.contains("io_uring is not available") }
        #expect(fallback.count == 1, "one line says why: \(weir.log)")
        #expect(fallback.first?.contains("EPERM") == true && fallback.first?.contains("using the epoll backend") == true)
        // HTTP keep-alive through the pool, and TCP bytes both ways.
        let c = try HTTPClient(port: try weir.port("web"), timeoutSeconds: 5)
        for i in 0..<20 {
            let r = try c.request("GET /\(i) HTTP/1.1\r\nHost: h\r\n\r\n")
            #expect(r.status == 200)
        }
        let tcp = try SocketAddress.parse("127.0.0.2:\(try weir.port("tcp"))")
        #expect(echoOnce(tcp, pseudoRandomBytes(1 << 20, seed: 14)))
        #expect(echo.bytesReceived == 1 << 20)
        #expect(try web.counts().requests == 20)
    }

    @Test func askingForIoUringWhereItIsDeniedFailsClearly() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-io-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("weir.yaml").path
        try tcpConfig(port: 0, endpoints: [(loopback(9), 1)], top: "limits: { io: io_uring }").write(toFile: config, atomically: true, encoding: .utf8)
        let (executable, arguments) = deniedIoUring([weirBinary(), "run", "--config", config])
        let (status, output) = try runCommand(executable, arguments, seconds: 20)
        #expect(status == 1)
        #expect(output.contains("io_uring_setup failed: EPERM") && output.contains("io: io_uring was asked for"), "\(output)")
    }

    @Test func aBadIOSettingIsAConfigErrorWithItsLine() throws {
        let (status, output) = try runWeir(["run", "--config", "/dev/null", "--io", "kqueue"])
        #expect(status != 0 && output.contains("--io must be auto, io_uring or epoll"), "\(output)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-io-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("weir.yaml").path
        try tcpConfig(port: 0, endpoints: [(loopback(9), 1)], top: "limits: { io: kqueue }").write(toFile: config, atomically: true, encoding: .utf8)
        let (checkStatus, checkOutput) = try runWeir(["check", "--config", config])
        #expect(checkStatus != 0 && checkOutput.contains("io must be auto, io_uring or epoll, not 'kqueue'"), "\(checkOutput)")
    }
}
