// weir.yaml(5) is how an operator learns the configuration: every key the YAML loader accepts
// must be named in it (a key added without its documentation, or a page emptied by mistake,
// fails here).
import Foundation
import Testing

@Suite struct ManPageTests {
    @Test func everyKeyTheLoaderAcceptsIsInWeirYaml5() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let loader = try String(contentsOf: root.appendingPathComponent("Sources/WeirConfig/YAMLLoader.swift"), encoding: .utf8)
        let page = try String(contentsOf: root.appendingPathComponent("man/weir.yaml.5"), encoding: .utf8)
        var keys = Set<String>()
        // The key lists the loader checks mappings against: `allowed: [...]` and `...Keys = [...]`.
        let lists = try Regex(#"(?:allowed:\s*|[kK]eys\s*=\s*)\[([^\]]*)\]"#)
        let quoted = try Regex(#""([a-z_0-9]+)""#)
        for m in loader.matches(of: lists) {
            guard let inner = m.output[1].substring else { continue }
            for k in inner.matches(of: quoted) { if let s = k.output[1].substring { keys.insert(String(s)) } }
        }
        #expect(keys.count > 100, "the loader's key lists were found: \(keys.count)")
        var missing: [String] = []
        for key in keys {
            let pattern = try NSRegularExpression(pattern: "(?<![a-z_])" + NSRegularExpression.escapedPattern(for: key) + "(?![a-z_])")
            if pattern.firstMatch(in: page, range: NSRange(page.startIndex..., in: page)) == nil { missing.append(key) }
        }
        #expect(missing.isEmpty, "not in man/weir.yaml.5: \(missing.sorted())")
    }
}
