// Config errors name the file, line and column, so an operator fixes the file without the source.

/// Where something was written in a config source.
public struct SourcePosition: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public init(file: String, line: Int, column: Int) {
        self.file = file; self.line = line; self.column = column
    }
    public var description: String { "\(file):\(line):\(column)" }
}

/// One problem in a config, with its position.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var position: SourcePosition
    public var message: String
    public init(_ position: SourcePosition, _ message: String) {
        self.position = position; self.message = message
    }
    public var description: String { "\(position): \(message)" }
}

/// Every problem found in one pass, so `weir check` can list them all at once.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]
    public init(_ errors: [ConfigError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}
