import SystemPackage

/// Descriptors that travel beside the bytes of an encoded value: a
/// `Connection` inside a job is encoded as an index into this list, and the
/// descriptor itself crosses by inheritance or `SCM_RIGHTS`.
internal final class DescriptorAttachments: @unchecked Sendable {  // used by one encoding or decoding at a time
    static let userInfoKey = CodingUserInfoKey(rawValue: "swift-multiprocessing.descriptors")!

    private(set) var descriptors: [FileDescriptor]
    /// Encoding: the descriptors that were attached, as the encoded value holds them.
    private(set) var originals: [FileDescriptor] = []
    private var taken: Set<Int> = []
    /// Whether the value is encoded for a forked child that runs the value
    /// itself, never decoding these bytes (a manager's proxy then makes no
    /// hold in transit for them: the child shares this process's).
    var forForkedChild = false

    init(_ descriptors: [FileDescriptor] = []) {
        self.descriptors = descriptors
    }

    /// The attachments of the job being encoded; `what` names the value in
    /// the error thrown when it is encoded anywhere else.
    static func of(_ encoder: any Encoder, encoding value: Any, what: String) throws -> DescriptorAttachments {
        guard let attachments = encoder.userInfo[userInfoKey] as? DescriptorAttachments else {
            throw EncodingError.invalidValue(value, .init(codingPath: encoder.codingPath, debugDescription: "\(what) can only be encoded in a job for a child process"))
        }
        return attachments
    }

    /// The attachments of the job being decoded.
    static func of(_ decoder: any Decoder, what: String) throws -> DescriptorAttachments {
        guard let attachments = decoder.userInfo[userInfoKey] as? DescriptorAttachments else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\(what) can only be decoded from a job"))
        }
        return attachments
    }

    /// Encoding: attaches a duplicate of `fd`; returns its index.
    func attach(_ fd: FileDescriptor) throws -> Int {
        descriptors.append(try Syscall.duplicate(fd))
        originals.append(fd)
        return descriptors.count - 1
    }

    /// Decoding: takes ownership of the descriptor at `index`.
    func take(_ index: Int) throws(WireError) -> FileDescriptor {
        guard descriptors.indices.contains(index), taken.insert(index).inserted else {
            throw .corrupt("no attached descriptor \(index)")
        }
        return descriptors[index]
    }

    /// Closes every descriptor nobody took.
    func closeUntaken() {
        for (index, fd) in descriptors.enumerated() where !taken.contains(index) {
            Syscall.close(fd)
        }
        taken = Set(descriptors.indices)
    }
}
