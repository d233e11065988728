/// What can go wrong reading values that crossed a process boundary.
public enum WireError: Error, Sendable, Equatable, Codable, CustomStringConvertible {
    /// The peer closed its end; no more frames will come.
    case endOfFile
    /// The stream ended inside a frame.
    case truncated(expected: Int, received: Int)
    /// A frame header claimed more bytes than any frame may have.
    case frameTooLarge(claimed: UInt64, limit: Int)
    /// The bytes of a frame do not decode as the expected value.
    case corrupt(String)

    public var description: String {
        switch self {
        case .endOfFile: "end of file: the peer closed the connection"
        case let .truncated(expected, received): "truncated frame: expected \(expected) bytes, received \(received)"
        case let .frameTooLarge(claimed, limit): "frame claims \(claimed) bytes, more than the limit of \(limit)"
        case let .corrupt(reason): "corrupt frame: \(reason)"
        }
    }
}
