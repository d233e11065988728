/// The work of a closure call, run only in the workers forked for it: the
/// encoded outcome of a unit — a range of the items the workers hold, or
/// items sent in the request.
@usableFromInline
internal final class ClosureProgram: @unchecked Sendable {  // its closures run only in forked children, never here
    let execute: (UnitRequest) -> (tag: UInt8, body: [UInt8])

    /// Over the items the forked workers hold: `execute` gets a unit's range.
    @usableFromInline
    init(execute: @escaping (Range<Int>) -> (tag: UInt8, body: [UInt8])) {
        self.execute = { request in execute(request.lower..<request.upper) }
    }

    private init(request execute: @escaping (UnitRequest) -> (tag: UInt8, body: [UInt8])) { self.execute = execute }

    /// Over `items`, which the forked workers hold: a unit is a range of them.
    /// Inlinable: the loop over them compiles for their types where called.
    @inlinable
    static func overHeld<Item, Output: Encodable>(_ items: [Item], _ body: @escaping (Item) throws -> Output) -> ClosureProgram {
        ValueCodec.prepare(Output.self)  // forked workers encode it (see prepare)
        return ClosureProgram { range in ChunkRunner.run(items[range], body).wire() }
    }

    /// Over items read lazily and sent in each unit's request, encoded:
    /// the workers are forked once for the call, and fed.
    @usableFromInline
    static func overSentItems<Item: Decodable, Output: Encodable>(_ body: @escaping (Item) throws -> Output) -> ClosureProgram {
        // The forked workers decode the items and encode the outputs (see prepare).
        ValueCodec.prepare(Item.self)
        ValueCodec.prepare(Output.self)
        return ClosureProgram { request in
            let items: [Item]
            do {
                items = try WireCodec.decode([Item].self, from: request.inputs, startingAt: request.inputsOffset)
            } catch {
                return UnitOutcome.failed(.corruptRequest(String(describing: error))).wire()
            }
            return ChunkRunner.run(items, body).wire()
        }
    }
}

/// A call's work, made ready by the non-inlinable half of a pool call for
/// its inlinable half to submit.
@usableFromInline
internal final class PreparedWork {
    let work: PoolCall.Work
    init(_ work: PoolCall.Work) { self.work = work }

    /// A closure call's work.
    @usableFromInline
    static func closure(_ program: ClosureProgram) -> PreparedWork { PreparedWork(.closure(program)) }
}
