/// A type of your own that a ``Manager`` serves: Python's
/// `BaseManager.register`. The server holds the one value and applies each
/// ``Request`` a proxy sends, one at a time, answering with a ``Response``.
///
/// The server finds the type by its mangled name (it runs the same
/// executable), and makes nothing that is not a `ManagedObject`.
///
/// ```swift
/// struct Tally: ManagedObject {
///     var counts: [String: Int] = [:]
///     mutating func handle(_ word: String) -> Int {
///         counts[word, default: 0] += 1
///         return counts[word]!
///     }
/// }
/// let tally = try manager.serve(Tally())
/// try tally.send("apple")   // 1, from any process
/// ```
public protocol ManagedObject: Codable, Sendable {
    /// What a proxy asks.
    associatedtype Request: Codable & Sendable
    /// What the object answers.
    associatedtype Response: Codable & Sendable

    /// Applies `request`, in the manager's server.
    mutating func handle(_ request: Request) throws -> Response
}

extension ManagedObject {
    /// Server side: decodes a request, applies it, encodes the response.
    mutating func _handleEncoded(_ bytes: [UInt8]) throws(ManagerError) -> [UInt8] {
        let request = try Served.decode(Request.self, bytes)
        let response: Response
        do {
            response = try handle(request)
        } catch {
            throw .objectFailed(errorType: String(reflecting: type(of: error)), description: String(describing: error))
        }
        return try Served.encode(response)
    }

    /// Server side: the object encoded in `bytes`.
    static func _decodeServed(_ bytes: [UInt8]) throws(ManagerError) -> any ManagedObject {
        try Served.decode(Self.self, bytes)
    }
}
