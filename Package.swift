// swift-tools-version:6.1
// dmem-emu: the Linux device-memory migration flow (HMM / ZONE_DEVICE, nouveau dmem)
// in userspace. Dependencies point downward only:
//   dmem-bench → DeviceEmu → { HostMM, DMAEngine → CUring }
// HostMM and DMAEngine never import each other.
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "dmem-emu",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "DMAEngine", targets: ["DMAEngine"]),
        .library(name: "HostMM", targets: ["HostMM"]),
        .library(name: "DeviceEmu", targets: ["DeviceEmu"]),
        .executable(name: "dmem-bench", targets: ["dmem-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // dmem-bench counts heap allocations in its timed phases (malloc/realloc per page).
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
    ],
    targets: [
        // C glue only: the liburing bridge and the few libc calls Glibc hides.
        .target(
            name: "CUring",
            path: "Sources/CUring",
            linkerSettings: [.linkedLibrary("uring")]
        ),
        // The copy engine: regions, channels, descriptors, fences, coalescing, backends.
        .target(
            name: "DMAEngine",
            dependencies: [
                "CUring",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The kernel memory-manager model: frames, struct page, mm, VMAs, faults, migrate_vma_*.
        .target(
            name: "HostMM",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The fake GPU and its dmem driver: joins HostMM and DMAEngine like nouveau.
        .target(
            name: "DeviceEmu",
            dependencies: [
                "HostMM", "DMAEngine",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "dmem-bench",
            dependencies: [
                "DeviceEmu", "HostMM", "DMAEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ],
            path: "bench",
            exclude: ["plot.py"],
            swiftSettings: strict
        ),
        .testTarget(name: "DMAEngineTests", dependencies: ["DMAEngine", "CUring"], swiftSettings: strict),
        // Added with their first tests:
        .testTarget(
            name: "HostMMTests",
            // DMAEngine only for the shared seeded generator (`SplitMix64`) of the fuzz tests.
            dependencies: ["HostMM", "DMAEngine", .product(name: "NIOConcurrencyHelpers", package: "swift-nio")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "DeviceEmuTests",
            dependencies: [
                "DeviceEmu", "HostMM", "DMAEngine",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "BenchTests", dependencies: ["dmem-bench", "DMAEngine", "DeviceEmu", "HostMM"], swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
