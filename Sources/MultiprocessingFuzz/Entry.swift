// The fuzzers of every decoder that reads bytes from another process, as one
// libFuzzer binary: `MULTIPROCESSING_FUZZ_TARGET` names the decoder. Built
// only with the package's `Fuzzing` trait and libFuzzer (scripts/fuzz.sh):
//
//     swift build --traits Fuzzing --product multiprocessing-fuzz --build-path .build-fuzz \
//         --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address
#if Fuzzing
import Glibc

nonisolated(unsafe) private var selected: FuzzTarget? = nil

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    // A peer that closed is an error the decoders must report, not a signal.
    signal(SIGPIPE, SIG_IGN)
    let names = FuzzTarget.all.map(\.name).joined(separator: ", ")
    guard let name = getenv("MULTIPROCESSING_FUZZ_TARGET").map({ String(cString: $0) }),
          let target = FuzzTarget.all.first(where: { $0.name == name })
    else {
        print("set MULTIPROCESSING_FUZZ_TARGET to one of: \(names)")
        exit(2)
    }
    if let directory = getenv("MULTIPROCESSING_FUZZ_SEEDS").map({ String(cString: $0) }) {
        // Writes the target's seeds (real messages made by the library) and leaves.
        for (index, seed) in target.seeds().enumerated() {
            let path = "\(directory)/seed-\(index)"
            guard let file = fopen(path, "wb") else { print("cannot write \(path)"); exit(1) }
            _ = seed.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
            fclose(file)
        }
        _exit(0)  // not exit: the leak checker would count the globals the seeds used
    }
    selected = target
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    selected?.fuzz(bytes)
    return 0
}
#else
@main
struct FuzzEntry {
    static func main() {
        print("""
            multiprocessing-fuzz is built with the Fuzzing trait and libFuzzer: run scripts/fuzz.sh \
            (it builds and runs every fuzzer).
            """)
    }
}
#endif
