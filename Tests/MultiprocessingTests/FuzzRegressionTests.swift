import CMultiprocessing
import Glibc
import SystemPackage
import Testing

@testable import Multiprocessing

// What the fuzzers (Sources/MultiprocessingFuzz, scripts/fuzz.sh) found, kept.
@Suite struct FuzzRegressionTests {
    struct Inner: Codable { var name: String; var values: [Double] }
    struct Outer: Codable { var id: Int; var inner: [Inner]; var table: [String: Int] }

    /// Found by the `wire` fuzzer as a leak: the reader kept its spare
    /// decoder, which refers to the reader, so every decode of a keyed value
    /// leaked both (about 1.5 KB for this shape).
    /// In a process of its own: the heap is the process's, and other tests
    /// running beside it would move it.
    @Test(.disabled(if: underSanitizer, "measures the heap")) func decodingKeyedValuesLeaksNothing() async {
        await #expect(processExitsWith: .success) {
            let bytes = try WireCodec.encode(Outer(id: 1, inner: [Inner(name: "a", values: [1, 2])], table: ["k": 1]))
            for _ in 0..<100 { _ = try WireCodec.decode(Outer.self, from: bytes) }
            let before = cmp_heap_in_use()
            for _ in 0..<20_000 { _ = try WireCodec.decode(Outer.self, from: bytes) }
            let growth = Int(cmp_heap_in_use()) - Int(before)
            // Leaking, this grew by about 30 MB.
            if growth > 2 << 20 {
                print("decoding grew the heap by \(growth) bytes")
                exit(1)
            }
        }
    }

    /// Found by the `frames` fuzzer as an out-of-memory: a frame header
    /// claiming gigabytes had its whole length allocated before any byte
    /// was read. Now memory follows the bytes that arrive: in a process
    /// allowed 1 GiB of data, a 16 GiB claim is a typed error, not a trap.
    @Test(.disabled(if: underSanitizer, "limits data size")) func aFrameHeaderThatLiesCostsOnlyWhatArrives() async {
        await #expect(processExitsWith: .success) {
            FuzzRegressionTests.limitData(to: 1 << 30)
            let (here, there) = try Syscall.socketPair()
            let claimed = 1 << 34
            try Frame.writeAll(Frame.header(for: claimed) + [1, 2, 3], to: there)
            try there.close()
            do {
                _ = try Frame.read(from: here)
            } catch WireError.truncated(expected: claimed, received: 3) {
                exit(0)
            }
            exit(1)
        }
    }

    /// The bootstrap's read of a request whose payload frame claims 3 GiB
    /// and brings a byte: a typed error, within the same 1 GiB.
    @Test(.disabled(if: underSanitizer, "limits data size")) func aBootRequestWithALyingPayloadIsRefused() async {
        await #expect(processExitsWith: .success) {
            FuzzRegressionTests.limitData(to: 1 << 30)
            let (here, there) = try Syscall.socketPair()
            let request = BootRequest(kind: .job, typeName: "T", name: "n", parent: ProcessContext.current)
            try Frame.writeAll(Frame.encode(try ValueCodec.encode(request)) + Frame.header(for: 3 << 30) + [9], to: there)
            try there.close()
            do {
                _ = try BootRequest.receive(from: here)
            } catch is WireError {
                exit(0)
            }
            exit(1)
        }
    }

    static func limitData(to bytes: Int) {
        var limit = rlimit(rlim_cur: rlim_t(bytes), rlim_max: rlim_t(bytes))
        precondition(setrlimit(__rlimit_resource_t(RLIMIT_DATA.rawValue), &limit) == 0)
    }
}
