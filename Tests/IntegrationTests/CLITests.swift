// The command line: check, version, demo.
import Foundation
import Testing

/// The repository root, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite(.serialized) struct CLITests {
    @Test func everyExampleConfigPassesCheck() throws {
        let dir = repositoryRoot.appendingPathComponent("etc/weir")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        #expect(files.count >= 2)
        for f in files {
            let (status, output) = try runWeir(["check", "--config", dir.appendingPathComponent(f).path])
            #expect(status == 0, "\(f): \(output)")
            #expect(output.contains("OK"))
        }
    }

    @Test func checkListsEveryErrorWithItsPosition() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).yaml").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try """
        listeners:
          - { name: a, address: "127.0.0.1:99999", cluster: b }
        clusters:
          - name: c
            endpoints: [{ address: "127.0.0.1:1", wieght: 2 }]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try runWeir(["check", "--config", path])
        #expect(status == 1)
        #expect(output.contains("\(path):2:25: listener 'a': '99999' is not a port number"))
        #expect(output.contains("\(path):5:43: unknown key 'wieght' in an endpoint"))
        #expect(output.contains("did you mean 'weight'?"))
        #expect(output.contains("2 error(s); nothing was applied"))
    }

    @Test func versionPrints() throws {
        let (status, output) = try runWeir(["version"])
        #expect(status == 0)
        #expect(output.hasPrefix("weir "))
    }

    @Test func badFlagsAreRefused() throws {
        let (status, output) = try runWeir(["run", "--config", "/dev/null", "--shards", "0"])
        #expect(status != 0)
        #expect(output.contains("--shards must be 1 to 1024"))
    }

    @Test func theDemoBalancesByWeightAndReportsNoErrors() throws {
        let (status, output) = try runWeir(["demo", "--connections", "120", "--clients", "6", "--bulk-bytes", "4194304", "--requests", "600",
                                            "--shards", "1"], seconds: 60)
        #expect(status == 0, "\(output)")
        // With one shard, weights 3:2:1 over 120 + 6 (bulk) connections are exact.
        #expect(output.contains("upstream-1"))
        #expect(output.contains("63  50.00%    50.00%"))
        #expect(output.contains("42  33.33%    33.33%"))
        #expect(output.contains("21  16.67%    16.67%"))
        #expect(output.contains("burst: 120/120 connections echoed"))
        #expect(output.contains("0 failed"))
        // HTTP: 600 keep-alive requests split 300:200:100 by the same weights.
        #expect(output.contains("300  50.00%    50.00%"))
        #expect(output.contains("200  33.33%    33.33%"))
        #expect(output.contains("100  16.67%    16.67%"))
        #expect(output.contains("http:  600/600 requests answered 200"))
    }
}
