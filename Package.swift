// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "swift-multiprocessing",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Multiprocessing", targets: ["Multiprocessing"]),
        .executable(name: "multiprocessing-examples", targets: ["MultiprocessingExamples"]),
        .executable(name: "multiprocessing-benchmarks", targets: ["MultiprocessingBenchmarks"]),
        .executable(name: "multiprocessing-soak", targets: ["MultiprocessingSoak"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
    ],
    targets: [
        .target(name: "CMultiprocessing"),
        .target(
            name: "Multiprocessing",
            dependencies: [
                "CMultiprocessing",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .executableTarget(
            name: "MultiprocessingExamples",
            dependencies: ["Multiprocessing"]
        ),
        .executableTarget(
            name: "MultiprocessingBenchmarks",
            dependencies: [
                "Multiprocessing",
                "CBenchmarkFloor",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            exclude: ["python_benchmarks.py"]
        ),
        .target(name: "CBenchmarkFloor"),
        .executableTarget(
            name: "MultiprocessingSoak",
            dependencies: [
                "Multiprocessing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "MultiprocessingTests",
            dependencies: ["Multiprocessing", "CMultiprocessing"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
