import Foundation
import Multiprocessing

@Sendable func codecSplit(_ count: Int) throws {
    var s = ContinuousClock.now
    var bytes: [UInt8] = []
    for _ in 0..<count { bytes = try WireCodec.encode(readings) }
    let enc = (ContinuousClock.now - s) / (count * readings.count)
    s = ContinuousClock.now
    for _ in 0..<count { _ = try WireCodec.decode([Reading].self, from: bytes) }
    let dec = (ContinuousClock.now - s) / (count * readings.count)
    print("wire enc", enc, "dec", dec)
}
@Sendable func codecEncodeOnly(_ count: Int) throws {
    for _ in 0..<count { _ = try WireCodec.encode(readings) }
}
@Sendable func codecDecodeOnly(_ count: Int) throws {
    let bytes = try WireCodec.encode(readings)
    for _ in 0..<count { _ = try WireCodec.decode([Reading].self, from: bytes) }
}
