/// Work that can cross a process boundary: a `Codable` value whose `run()`
/// is called in the child, by any start method.
///
/// The child finds the type by its mangled name, so the type must exist in
/// the same executable. A name that does not resolve to a `ProcessJob` is
/// refused with ``ProcessError/notAJob(_:)``: bytes from a pipe never make a
/// child run anything else.
public protocol ProcessJob: Codable, Sendable {
    /// What `run()` returns to the parent.
    associatedtype Output: Codable & Sendable

    /// Does the work in the child process.
    func run() throws -> Output
}

/// Runs an encoded job in the child: resolving, decoding, running, encoding.
internal enum JobRunner {
    /// The name the child uses to find `type`.
    static func typeName(of type: any ProcessJob.Type) -> String {
        _mangledTypeName(type) ?? String(reflecting: type)
    }

    /// Resolves `typeName` and runs the job decoded from `payload`; the
    /// result is the encoded output or the error to report.
    static func run(typeName: String, payload: [UInt8], attachments: DescriptorAttachments? = nil) -> Result<[UInt8], ProcessError> {
        guard let type = _typeByName(typeName) else {
            return .failure(.unknownJobType(typeName))
        }
        guard let jobType = type as? any ProcessJob.Type else {
            return .failure(.notAJob(typeName))
        }
        return jobType.runEncoded(payload, attachments: attachments)
    }

    /// Runs the job of type `jobType` decoded from `payload`.
    static func run(_ jobType: any ProcessJob.Type, payload: [UInt8]) -> Result<[UInt8], ProcessError> {
        jobType.runEncoded(payload, attachments: nil)
    }
}

extension ProcessJob {
    fileprivate static func runEncoded(_ payload: [UInt8], attachments: DescriptorAttachments?) -> Result<[UInt8], ProcessError> {
        let job: Self
        do {
            job = try ValueCodec.decode(Self.self, from: payload, attachments: attachments)
        } catch {
            return .failure(.corruptRequest(error.description))
        }
        return job.runAndEncode()
    }

    /// Runs the job here and encodes its output, or the error it threw.
    internal func runAndEncode() -> Result<[UInt8], ProcessError> {
        JobRunner.runAndEncode(run)
    }
}

extension JobRunner {
    /// Runs `body` and encodes its output, or the error it threw.
    static func runAndEncode<Output: Encodable>(_ body: () throws -> Output) -> Result<[UInt8], ProcessError> {
        let output: Output
        do {
            output = try body()
        } catch {
            return .failure(.thrown(error))
        }
        do {
            return .success(try ValueCodec.encode(output))
        } catch {
            return .failure(.thrown(error, while: "encoding the output"))
        }
    }
}
