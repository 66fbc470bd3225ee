@testable import DMAEngine
import Glibc
import Testing

/// Anonymous host memory for tests (stands in for emulated System RAM).
final class HostBuffer: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer
    init(_ size: Int) {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        precondition(p != MAP_FAILED)
        bytes = UnsafeMutableRawBufferPointer(start: p, count: size)
    }
    deinit { munmap(bytes.baseAddress, bytes.count) }
}

/// Fills `bytes` with a pattern that differs per position and per `seed`.
func fillPattern(_ bytes: UnsafeMutableRawBufferPointer, seed: UInt64) {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<bytes.count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        bytes[i] = UInt8(truncatingIfNeeded: x)
    }
}

func same(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool { memcmp(a, b, n) == 0 }

/// The suites' common rig: an engine with `size` bytes of registered host memory (filled
/// with the pattern of `patternSeed`, if given), a VRAM pool of the same size and one channel.
struct EngineRig {
    let engine: DMAEngine
    let host: HostBuffer
    let h: RegionID
    let vram: VRAMPool
    let ch: DMAChannel

    init(_ configuration: DMAEngine.Configuration, size: Int = 1 << 20, patternSeed: UInt64? = nil) throws {
        engine = try DMAEngine(configuration: configuration)
        host = HostBuffer(size)
        h = try engine.registerHostMemory(host.bytes)
        vram = try engine.createVRAMPool(size: size)
        ch = try engine.makeChannel()
        if let patternSeed { fillPattern(host.bytes, seed: patternSeed) }
    }

    /// Page `page` of the host memory.
    func host(_ page: Int) -> DMAAddress { DMAAddress(region: h, offset: page * 4096) }
}

/// The backends every data test runs on.
enum BackendUnderTest: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case iouring, iouringNoCoalesce, memcpy, mapped, faultyIouringClean

    var kind: CopyBackendKind {
        switch self {
        case .iouring, .iouringNoCoalesce: return .ioUring
        case .memcpy: return .memcpy
        case .mapped: return .mappedWorkers(threads: 2)
        case .faultyIouringClean: return .faultInjecting(FaultPlan(rules: []), wrapping: .ioUring)
        }
    }

    var coalescing: Bool { self != .iouringNoCoalesce }

    func engine(queueDepth: Int = 16, maxBatch: Int = 4096) throws -> DMAEngine {
        try DMAEngine(configuration: .init(backend: kind, queueDepth: queueDepth, coalescing: coalescing, maxBatch: maxBatch))
    }

    var testDescription: String { rawValue }
}
