import Glibc
import SystemPackage

/// What a child tells its parent before it exits: the encoded output of its
/// work, or the error that stopped it. One frame: a tag byte, then the bytes.
internal enum ChildReport {
    static func encode(_ result: Result<[UInt8], ProcessError>) -> [UInt8] {
        switch result {
        case let .success(payload):
            return [0] + payload
        case let .failure(error):
            return [1] + ((try? ValueCodec.encode(error)) ?? [])
        }
    }

    static func decode(_ frame: [UInt8]) throws(WireError) -> Result<[UInt8], ProcessError> {
        guard let tag = frame.first else { throw .corrupt("empty child report") }
        let rest = Array(frame.dropFirst())
        switch tag {
        case 0: return .success(rest)
        case 1: return .failure(try ValueCodec.decode(ProcessError.self, from: rest))
        default: throw .corrupt("unknown child report tag \(tag)")
        }
    }
}

/// What a spawned child or the forkserver is asked to do: the header frame
/// of a request; the job's encoded value follows in a frame of its own.
internal struct BootRequest: Codable, Sendable {
    enum Kind: String, Codable, Sendable {
        case job
        case forkServer
    }

    var kind: Kind
    var typeName: String
    var name: String
    var parent: ProcessDescription
    /// Descriptors attached to the job (connections), after the channel.
    var descriptorCount: Int = 0
    /// Limits and environment the child sets up before its job.
    var setup: WorkerSetup? = nil
    /// Whether two more descriptors follow the job's: memory files the
    /// child takes as its standard output and error (``ChildCaptures``).
    var capturesOutput = false

    static func send(_ request: BootRequest, payload: [UInt8], to fd: FileDescriptor) throws {
        try Frame.writeAll(Frame.encode(try ValueCodec.encode(request)) + Frame.encode(payload), to: fd)
    }

    static func receive(from fd: FileDescriptor) throws -> (BootRequest, [UInt8]) {
        let header = try ValueCodec.decode(BootRequest.self, from: try Frame.read(from: fd))
        let payload = try Frame.read(from: fd)
        return (header, payload)
    }
}

/// The memory files a lone child writes its standard output and error into
/// (``ChildProcess/capturesOutput``): the parent keeps them and reads them
/// once the child has ended.
internal struct ChildCaptures: Sendable {
    let standardOutput: FileDescriptor
    let standardError: FileDescriptor

    var descriptors: [FileDescriptor] { [standardOutput, standardError] }

    static func make(name: String) throws -> ChildCaptures {
        let output = try Syscall.memfdCreate("\(name)-stdout")
        do {
            return ChildCaptures(standardOutput: output, standardError: try Syscall.memfdCreate("\(name)-stderr"))
        } catch {
            Syscall.close(output)
            throw error
        }
    }

    /// What the child wrote (the tail of each stream).
    func read() -> CapturedOutput { CapturedOutput.read(standardOutput: standardOutput, standardError: standardError) }

    func close() {
        Syscall.close(standardOutput)
        Syscall.close(standardError)
    }

    /// In the child: takes `descriptors` (standard output's, then standard
    /// error's) as its streams; an error says what failed.
    static func redirect(_ descriptors: [FileDescriptor]) -> ProcessError? {
        guard descriptors.count == 2 else { return ProcessError.corruptRequest("\(descriptors.count) captured streams") }
        do {
            try Syscall.redirectStandardOutput(to: descriptors[0])
            try Syscall.redirect(descriptors[1], onto: STDERR_FILENO)
            return nil
        } catch {
            return ProcessError("dup2 (captured output)", error)
        }
    }
}
