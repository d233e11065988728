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
        // The pool across machines, over MPI: built with `--traits MPI`.
        .library(name: "MultiprocessingMPI", targets: ["MultiprocessingMPI"]),
        .executable(name: "multiprocessing-mpi-examples", targets: ["MultiprocessingMPIExamples"]),
        // libFuzzer targets of every decoder of another process's bytes: scripts/fuzz.sh.
        .executable(name: "multiprocessing-fuzz", targets: ["MultiprocessingFuzz"]),
    ],
    traits: [
        .trait(name: "MPI", description: "The pool over MPI (MultiprocessingMPI); needs Open MPI (libopenmpi-dev)."),
        .trait(name: "Fuzzing", description: "The libFuzzer entry of multiprocessing-fuzz; build it with scripts/fuzz.sh."),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
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
                .product(name: "CoreMetrics", package: "swift-metrics"),
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
                "MultiprocessingMPI",
                "CBenchmarkFloor",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            exclude: ["python_benchmarks.py", "mpi4py_benchmarks.py"]
        ),
        .target(name: "CBenchmarkFloor"),
        .executableTarget(
            name: "MultiprocessingSoak",
            dependencies: [
                "Multiprocessing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // MPI: Open MPI's headers and library, through pkg-config's `ompi`.
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        // Without the `MPI` trait these compile to nothing (`#if MPI`) and
        // link no MPI, so a plain build needs none installed.
        .target(
            name: "MultiprocessingMPI",
            dependencies: [
                "Multiprocessing",
                "CMultiprocessing",
                .target(name: "CMPI", condition: .when(traits: ["MPI"])),
            ]
        ),
        .executableTarget(
            name: "MultiprocessingMPIExamples",
            dependencies: ["MultiprocessingMPI", "Multiprocessing"]
        ),
        // The programs the MPI tests run under `mpirun`.
        .executableTarget(
            name: "MultiprocessingMPIScenarios",
            dependencies: ["MultiprocessingMPI", "Multiprocessing"]
        ),
        // Without the `Fuzzing` trait, a program that says how to build it.
        .executableTarget(
            name: "MultiprocessingFuzz",
            dependencies: [
                "Multiprocessing",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "MultiprocessingMPITests",
            dependencies: ["MultiprocessingMPI", "Multiprocessing", "MultiprocessingMPIScenarios"]
        ),
        .testTarget(
            name: "MultiprocessingTests",
            dependencies: ["Multiprocessing", "CMultiprocessing", .product(name: "Logging", package: "swift-log"),
                           .product(name: "MetricsTestKit", package: "swift-metrics")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
