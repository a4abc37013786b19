// Reads the server name (SNI) and the offered application protocols (ALPN) from a TLS ClientHello
// without terminating TLS, so a listener can route TLS it passes through untouched, or choose a
// filter chain before a handshake starts. The ClientHello must sit in its first record (every
// common client does this); nothing is copied and no clock is read.

public enum ClientHelloOutcome: Equatable {
    /// More bytes are needed.
    case incomplete
    /// The bytes are not a TLS handshake (or not a ClientHello): route as if there were no SNI.
    case notTLS
    /// A ClientHello; the server name as offsets into the buffer, or nil when it sent none; the
    /// ALPN protocol list in its wire form (a length byte before each name), or nil.
    case hello(serverName: ByteRange?, alpn: ByteRange?)
}

public enum ClientHello {
    /// Parses the start of a connection's bytes. `limit` bounds how much may be read before
    /// giving up (a ClientHello larger than this is treated as having no SNI).
    public static func parse(_ buf: UnsafeRawBufferPointer, limit: Int = 16 * 1024) -> ClientHelloOutcome {
        var message: (start: Int, count: Int)? = nil
        guard buf.count >= 1 else { return .incomplete }
        guard buf[0] == 0x16 else { return .notTLS }
        guard buf.count >= 5 else { return .incomplete }
        guard buf[1] == 3 else { return .notTLS }
        let recordLength = Int(buf[3]) << 8 | Int(buf[4])
        guard recordLength > 0, recordLength <= 16384 + 2048 else { return .notTLS }
        guard buf.count >= 5 + min(recordLength, 4) else { return .incomplete }
        guard buf[5] == 1 else { return .notTLS }
        if recordLength >= 4 {
            let helloLength = Int(buf[6]) << 16 | Int(buf[7]) << 8 | Int(buf[8])
            if helloLength + 4 <= recordLength {
                guard buf.count >= 5 + helloLength + 4 else { return .incomplete }
                message = (9, helloLength)
            } else if 5 + recordLength + 5 + helloLength > limit {
                return .hello(serverName: nil, alpn: nil)
            }
        }
        if message == nil {
            // Spread over several records (a rare client choice): the name is not contiguous, so
            // this ClientHello is routed as having no SNI.
            guard buf.count >= 5 + recordLength else { return .incomplete }
            return .hello(serverName: nil, alpn: nil)
        }
        guard let (start, count) = message else { return .notTLS }
        let found = extensions(buf, start, start + count)
        return .hello(serverName: found.serverName, alpn: found.alpn)
    }

    /// Walks a ClientHello body [start, end) to the server_name and ALPN extensions.
    static func extensions(_ b: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> (serverName: ByteRange?, alpn: ByteRange?) {
        var name: ByteRange? = nil, alpn: ByteRange? = nil
        var p = start + 2 + 32                       // legacy_version, random
        guard p < end else { return (nil, nil) }
        p += 1 + Int(b[p])                           // session id
        guard p + 2 <= end else { return (nil, nil) }
        p += 2 + (Int(b[p]) << 8 | Int(b[p + 1]))    // cipher suites
        guard p < end else { return (nil, nil) }
        p += 1 + Int(b[p])                           // compression methods
        guard p + 2 <= end else { return (nil, nil) }
        let extensionsEnd = min(end, p + 2 + (Int(b[p]) << 8 | Int(b[p + 1])))
        p += 2
        while p + 4 <= extensionsEnd {
            let type = Int(b[p]) << 8 | Int(b[p + 1])
            let length = Int(b[p + 2]) << 8 | Int(b[p + 3])
            p += 4
            guard p + length <= extensionsEnd else { return (name, alpn) }
            if type == 16 && length >= 2 {
                // protocol_name_list: 2-byte length, then names each after a length byte.
                let listLength = Int(b[p]) << 8 | Int(b[p + 1])
                if listLength + 2 <= length { alpn = ByteRange(p + 2, p + 2 + listLength) }
            } else if type == 0 {
                // server_name_list: 2-byte length, then entries of type (1), length (2), name.
                var q = p + 2
                let listEnd = min(p + length, p + 2 + (length >= 2 ? (Int(b[p]) << 8 | Int(b[p + 1])) : 0))
                while q + 3 <= listEnd {
                    let nameType = b[q]
                    let nameLength = Int(b[q + 1]) << 8 | Int(b[q + 2])
                    q += 3
                    guard q + nameLength <= listEnd else { break }
                    if nameType == 0 && nameLength > 0 { name = ByteRange(q, q + nameLength); break }
                    q += nameLength
                }
            }
            p += length
        }
        return (name, alpn)
    }
}
