/// Why a ``Connection`` operation failed. End of file, truncated and corrupt
/// frames are ``WireError``s.
public enum ConnectionError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The connection was closed by this process.
    case closed
    /// This end only sends (a one-way pipe's write end).
    case notReadable
    /// This end only receives (a one-way pipe's read end).
    case notWritable
    /// The next message has `needed` bytes, more than the buffer holds. The
    /// message stays queued: receive it with a larger buffer.
    case bufferTooSmall(needed: Int)
    /// The peer did not prove it knows the authentication key.
    case authenticationFailed
    /// An address that cannot be used (a Unix path too long, a bad host).
    case invalidAddress(String)

    public var description: String {
        switch self {
        case .closed: "the connection is closed"
        case .notReadable: "this end of the connection cannot receive"
        case .notWritable: "this end of the connection cannot send"
        case let .bufferTooSmall(needed): "the next message has \(needed) bytes, more than the buffer holds"
        case .authenticationFailed: "authentication failed: the peer does not know the key"
        case let .invalidAddress(address): "invalid address: \(address)"
        }
    }
}
