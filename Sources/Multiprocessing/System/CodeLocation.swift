import CMultiprocessing

/// Where a piece of machine code is, in a form another process running the
/// same executable and libraries can resolve: the GNU build ID of the image
/// that holds it and the offset from where that image is loaded. Spawned
/// processes load images at other addresses; the offsets stay.
internal struct CodeLocation: Codable, Sendable, Hashable {
    var image: [UInt8]
    var offset: UInt64

    /// The location of the code at `address`, or nil if no loaded image with
    /// a build ID has code there.
    init?(_ address: UnsafeRawPointer) {
        var location = cmp_code_location_t()
        guard cmp_code_locate(address, &location) == 1 else { return nil }
        image = withUnsafeBytes(of: location.build_id) { Array($0.prefix(Int(location.build_id_length))) }
        offset = location.offset
    }

    /// The address of this code here, or nil if no loaded image has this
    /// build ID (another build runs here) or the offset is not in its code.
    func resolve() -> UnsafeRawPointer? {
        var location = cmp_code_location_t()
        guard image.count <= MemoryLayout.size(ofValue: location.build_id) else { return nil }
        withUnsafeMutableBytes(of: &location.build_id) { $0.copyBytes(from: image) }
        location.build_id_length = UInt32(image.count)
        location.offset = offset
        return cmp_code_resolve(&location)
    }

    /// The image's build ID in hexadecimal, for messages.
    var imageDescription: String {
        let digits = Array("0123456789abcdef")
        return String(image.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0xF)]] })
    }
}

/// A Swift function value: its code and its context (nil when it captures
/// nothing). The layout of every Swift function type that is not `@convention(c)`.
///
/// A function value is called by the convention of the abstraction it was
/// made at. Given to a generic parameter, a function whose parameter types
/// are themselves generic stays as it is; one of concrete type is wrapped
/// in a thunk (and has a context): a value of concrete function type goes
/// through a non-generic struct that stores it (``SentRunnerBox``) instead.
@usableFromInline
internal struct ThickFunction {
    var code: UnsafeRawPointer
    var context: UnsafeRawPointer?

    /// The parts of `function`, a value of a Swift function type.
    init<Function>(_ function: Function) {
        precondition(MemoryLayout<Function>.size == MemoryLayout<ThickFunction>.size, "not a Swift function value")
        self = unsafeBitCast(function, to: ThickFunction.self)
    }

    @usableFromInline
    init(code: UnsafeRawPointer) {
        self.code = code
        self.context = nil
    }

    /// The function value of type `Function` made of these parts. Only for
    /// the type the code was taken from, at the same abstraction (both sides
    /// generic over the same parameters).
    @usableFromInline
    func function<Function>(as type: Function.Type) -> Function {
        precondition(MemoryLayout<Function>.size == MemoryLayout<ThickFunction>.size, "not a Swift function type")
        return unsafeBitCast(self, to: Function.self)
    }
}
