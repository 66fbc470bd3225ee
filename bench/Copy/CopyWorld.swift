import DMAEngine
import Dispatch
import Foundation
import Glibc

/// The memory of a copy run: emulated RAM (anonymous, pre-faulted, stamped),
/// two VRAM pools, all registered with one engine.
///
/// Threads: built and used by the scenario's thread; its channels' threads read the memory.
final class CopyWorld {
    let options: CopyOptions
    let engine: DMAEngine
    let ram: UnsafeMutableRawBufferPointer
    let ramID: RegionID
    let vramA: VRAMPool
    let vramB: VRAMPool

    /// Owns `ram`'s mapping (unmapped when the world goes, or when `init` throws).
    private let ramMapping: AnonymousMapping

    init(_ o: CopyOptions) throws {
        options = o
        ramMapping = try AnonymousMapping(length: max(o.hostBytes ?? 4 * o.totalBytes, o.totalBytes))
        ram = UnsafeMutableRawBufferPointer(start: ramMapping.base, count: ramMapping.length)
        var configuration = DMAEngine.Configuration(backend: o.engineBackend, queueDepth: o.queueDepth,
                                                    maxBatch: max(o.batchPages, 1))
        configuration.fixedBuffers = o.fixedBuffers
        engine = try DMAEngine(configuration: configuration)
        ramID = try engine.registerHostMemory(ram, name: "ram")
        vramA = try engine.createVRAMPool(size: o.totalBytes, name: "vram-a", layout: o.vramLayout)
        vramB = try engine.createVRAMPool(size: o.totalBytes, name: "vram-b", layout: o.vramLayout)
        Self.stamp(ram, pageSize: o.pageSize, salt: 1)
        Self.stamp(vramA.mapping, pageSize: o.pageSize, salt: 2)
        Self.stamp(vramB.mapping, pageSize: o.pageSize, salt: 3)
    }

    /// Fills every page with words unique to (salt, page, word): misplaced pages cannot verify.
    static func stamp(_ m: UnsafeMutableRawBufferPointer, pageSize: Int, salt: UInt64) {
        let words = m.count / 8
        let chunks = 16
        let address = UInt(bitPattern: m.baseAddress!)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let w = UnsafeMutablePointer<UInt64>(bitPattern: address)!
            for i in (words * c / chunks)..<(words * (c + 1) / chunks) {
                w[i] = (salt << 56) ^ (UInt64(i) &* 0x9E37_79B9_7F4A_7C15)
            }
        }
    }

    /// The scatter pattern of one direction: `count` page pairs.
    func pattern(_ direction: CopyDirection) -> ScatterPattern {
        let o = options
        let pages = o.totalBytes / o.pageSize
        var rng = SplitMix64(seed: o.seed &+ UInt64(CopyDirection.allCases.firstIndex(of: direction)!))
        let ramFrames = ram.count / o.pageSize
        // A partial Fisher–Yates: `pages` distinct random frames.
        var frames = Array(0..<ramFrames)
        for i in 0..<pages { frames.swapAt(i, Int.random(in: i..<ramFrames, using: &rng)) }
        let scattered = Array(frames.prefix(pages))
        switch direction {
        case .hostToDevice:
            return ScatterPattern(count: pages, pageSize: o.pageSize,
                                  src: .init(id: ramID, base: ram.baseAddress!, pages: scattered),
                                  dst: .init(id: vramA.region, base: vramA.mapping.baseAddress!, pages: nil))
        case .deviceToHost:
            return ScatterPattern(count: pages, pageSize: o.pageSize,
                                  src: .init(id: vramA.region, base: vramA.mapping.baseAddress!, pages: nil),
                                  dst: .init(id: ramID, base: ram.baseAddress!, pages: scattered))
        case .deviceToDevice, .hostToHost:
            var perm = Array(0..<pages)
            perm.shuffle(using: &rng)
            return ScatterPattern(count: pages, pageSize: o.pageSize,
                                  src: .init(id: vramB.region, base: vramB.mapping.baseAddress!, pages: perm),
                                  dst: .init(id: vramA.region, base: vramA.mapping.baseAddress!, pages: nil))
        }
    }
}

/// Page i of a run goes from `src` page to `dst` page; a side with `pages == nil` is contiguous.
struct ScatterPattern: @unchecked Sendable {
    struct Side {
        var id: RegionID
        var base: UnsafeMutableRawPointer
        var pages: [Int]?
        func page(_ i: Int) -> Int { pages?[i] ?? i }
    }

    var count: Int
    var pageSize: Int
    var src: Side
    var dst: Side

    func source(_ i: Int) -> DMAAddress { DMAAddress(region: src.id, offset: src.page(i) * pageSize) }
    func destination(_ i: Int) -> DMAAddress { DMAAddress(region: dst.id, offset: dst.page(i) * pageSize) }

    /// The baseline: the same page pairs with memcpy on one thread; returns seconds.
    func memcpyAll() -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        for i in 0..<count {
            memcpy(dst.base + dst.page(i) * pageSize, src.base + src.page(i) * pageSize, pageSize)
        }
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    func poisonDestinations(_ byte: UInt8) {
        for i in 0..<count { memset(dst.base + dst.page(i) * pageSize, Int32(byte), pageSize) }
    }

    /// Byte-for-byte: every destination page equals its source page.
    func verify() -> Bool {
        (0..<count).allSatisfy { i in
            memcmp(dst.base + dst.page(i) * pageSize, src.base + src.page(i) * pageSize, pageSize) == 0
        }
    }
}
