// A reader of protobuf's wire format for the few extension messages Weir decides on without their
// generated types (Istio's TypedStruct wrapper, Wasm plugin configs, upstream HTTP protocol
// options): fields by number, nothing interpreted beyond what a caller asks for. A message that
// does not parse is nil, and callers refuse it.
import Foundation

struct RawProto {
    struct Field {
        let number: Int
        /// 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
        let wire: Int
        let varint: UInt64
        let bytes: [UInt8]
    }
    let fields: [Field]

    init?(_ data: Data) { self.init([UInt8](data)) }

    init?(_ b: [UInt8]) {
        var out: [Field] = []
        var i = 0
        func varint() -> UInt64? {
            var v: UInt64 = 0
            var shift: UInt64 = 0
            while i < b.count && shift < 64 {
                let byte = b[i]
                i += 1
                v |= UInt64(byte & 0x7F) << shift
                if byte & 0x80 == 0 { return v }
                shift += 7
            }
            return nil
        }
        while i < b.count {
            guard let key = varint(), key >> 3 > 0, key >> 3 < 1 << 29 else { return nil }
            let number = Int(key >> 3), wire = Int(key & 7)
            switch wire {
            case 0:
                guard let v = varint() else { return nil }
                out.append(Field(number: number, wire: 0, varint: v, bytes: []))
            case 1, 5:
                let n = wire == 1 ? 8 : 4
                guard i + n <= b.count else { return nil }
                out.append(Field(number: number, wire: wire, varint: 0, bytes: Array(b[i..<(i + n)])))
                i += n
            case 2:
                guard let len = varint(), len <= UInt64(b.count - i) else { return nil }
                out.append(Field(number: number, wire: 2, varint: 0, bytes: Array(b[i..<(i + Int(len))])))
                i += Int(len)
            default:
                return nil
            }
        }
        fields = out
    }

    /// The field numbers present.
    var numbers: Set<Int> { Set(fields.map(\.number)) }
    func bytes(_ n: Int) -> [UInt8]? { fields.last { $0.number == n && $0.wire == 2 }?.bytes }
    func string(_ n: Int) -> String? { bytes(n).flatMap { String(validating: $0, as: UTF8.self) } }
    func message(_ n: Int) -> RawProto? { bytes(n).flatMap { RawProto($0) } }
    func varint(_ n: Int) -> UInt64? { fields.last { $0.number == n && $0.wire == 0 }?.varint }
    /// Every length-delimited occurrence of field `n` (a repeated field, or map entries).
    func all(_ n: Int) -> [RawProto] { fields.filter { $0.number == n && $0.wire == 2 }.compactMap { RawProto($0.bytes) } }

    /// A google.protobuf.Struct: the Value under `key` (its fields are map entries key 1, value 2).
    func structField(_ key: String) -> RawProto? { all(1).first { $0.string(1) == key }?.message(2) }
    /// Following nested Structs by keys (a Value's struct_value is field 5), the last Value's
    /// string_value (field 3).
    func structString(_ path: [String]) -> String? {
        var current = self
        for (i, key) in path.enumerated() {
            guard let value = current.structField(key) else { return nil }
            if i == path.count - 1 { return value.string(3) }
            guard let inner = value.message(5) else { return nil }
            current = inner
        }
        return nil
    }
}
