/// Fixed-size C state of a primitive in anonymous shared memory of its own.
internal struct SharedCell<State>: Sendable, Codable {
    let memory: SharedMemory

    init() throws {
        memory = try SharedMemory(size: MemoryLayout<State>.size)
    }

    var pointer: UnsafeMutablePointer<State> {
        memory.baseAddress.assumingMemoryBound(to: State.self)
    }

    init(from decoder: any Decoder) throws {
        memory = try SharedMemory(from: decoder)
        guard memory.size == MemoryLayout<State>.size else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "shared state of the wrong size"))
        }
    }

    func encode(to encoder: any Encoder) throws {
        try memory.encode(to: encoder)
    }
}
