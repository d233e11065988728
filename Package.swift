// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "swift-multiprocessing",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Multiprocessing", targets: ["Multiprocessing"]),
        .executable(name: "multiprocessing-examples", targets: ["MultiprocessingExamples"]),
        .executable(name: "multiprocessing-benchmarks", targets: ["MultiprocessingBenchmarks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        .target(name: "CMultiprocessing"),
        .target(
            name: "Multiprocessing",
            dependencies: [
                "CMultiprocessing",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "MultiprocessingExamples",
            dependencies: ["Multiprocessing"]
        ),
        .executableTarget(
            name: "MultiprocessingBenchmarks",
            dependencies: ["Multiprocessing", "CMultiprocessing"],
            resources: [.copy("python_benchmarks.py")]
        ),
        .testTarget(
            name: "MultiprocessingTests",
            dependencies: ["Multiprocessing", "CMultiprocessing"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
