import Crypto

/// Python's mutual challenge–response: each side sends the other a random
/// challenge and checks the HMAC-SHA256 of it under the shared key; neither
/// side ever sends the key. Messages are capped, and each step has a deadline,
/// so a peer that stalls or floods cannot hold a listener.
internal enum Authentication {
    static let challengePrefix: [UInt8] = Array("#CHALLENGE#{sha256}".utf8)
    static let welcome: [UInt8] = Array("#WELCOME#".utf8)
    static let failure: [UInt8] = Array("#FAILURE#".utf8)
    static let challengeSize = 40
    static let maximumMessage = 256
    static let stepTimeout: Duration = .seconds(10)

    /// The server's half: challenge the client, then answer its challenge.
    static func serve(_ connection: Connection, key: [UInt8]) throws {
        try challenge(connection, key: key)
        try answer(connection, key: key)
    }

    /// The client's half: answer the server's challenge, then challenge it.
    static func client(_ connection: Connection, key: [UInt8]) throws {
        try answer(connection, key: key)
        try challenge(connection, key: key)
    }

    private static func challenge(_ connection: Connection, key: [UInt8]) throws {
        var random = SystemRandomNumberGenerator()
        let message = challengePrefix + (0..<challengeSize).map { _ in UInt8.random(in: 0...255, using: &random) }
        try connection.sendBytes(message)
        let response = try receive(connection)
        let valid = HMAC<SHA256>.isValidAuthenticationCode(response, authenticating: message, using: SymmetricKey(data: key))
        try connection.sendBytes(valid ? welcome : failure)
        guard valid else { throw ConnectionError.authenticationFailed }
    }

    private static func answer(_ connection: Connection, key: [UInt8]) throws {
        let message = try receive(connection)
        guard message.starts(with: challengePrefix) else { throw ConnectionError.authenticationFailed }
        let digest = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key))
        try connection.sendBytes(Array(digest))
        guard try receive(connection) == welcome else { throw ConnectionError.authenticationFailed }
    }

    private static func receive(_ connection: Connection) throws -> [UInt8] {
        guard try connection.poll(timeout: stepTimeout) else { throw ConnectionError.authenticationFailed }
        do {
            return try connection.receiveBytes(maxLength: maximumMessage)
        } catch ConnectionError.bufferTooSmall {
            throw ConnectionError.authenticationFailed
        } catch WireError.endOfFile {
            // The peer went away: not a verdict on the key.
            throw WireError.endOfFile
        } catch is WireError {
            throw ConnectionError.authenticationFailed
        }
    }
}
