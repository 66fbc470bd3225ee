import DMAEngine
import Foundation
import NIOConcurrencyHelpers
import Testing
@testable import HostMM

/// Seeded random bad input against every public HostMM entry point: each call returns a
/// typed `HostMMError` or succeeds, nothing traps, and after every call the model's
/// invariants (`checkInvariants`) hold. Bounded: a fixed number of calls per seed.
///
/// The arguments are drawn from the values that break code: unaligned and wrapped
/// addresses, zero, negative and huge lengths, PFNs past the table, free and foreign
/// pages, unknown flag bits, short and empty arrays, objects of a dead address space.
/// Calls that a correct driver makes only with its own live pages (`putPage` of a mapped
/// page, say) are exercised only with arguments HostMM can recognise as bad.
@Suite(.timeLimit(.minutes(2))) struct BadInputFuzzTests {
    @Test(arguments: [(UInt64(1), true), (2, false), (3, true), (4, false)])
    func randomBadCallsThrowTypedErrorsAndKeepInvariants(seed: UInt64, checked: Bool) throws {
        let fuzz = try HostMMFuzz(seed: seed, checked: checked)
        for step in 0..<400 {
            let call = fuzz.step()
            let problems = fuzz.memory.checkInvariants(addressSpaces: fuzz.spaces)
            if !problems.isEmpty {
                Issue.record("seed \(seed) step \(step) after \(call): \(problems.prefix(5))")
                return
            }
        }
        fuzz.finish()
        #expect(fuzz.memory.checkInvariants(addressSpaces: fuzz.spaces).isEmpty)
        // Both outcomes occurred: the input was bad enough, and the state moved on.
        #expect(fuzz.errors > 100 && fuzz.successes > 20, "errors \(fuzz.errors), successes \(fuzz.successes)")
    }
}

/// The fuzzer's machine and its random choices.
final class HostMMFuzz {
    final class NoOpNotifier: MMUIntervalNotifierOps, @unchecked Sendable {
        func invalidate(_ notifier: MMUIntervalNotifier, range: MMUNotifierRange, currentSequence: UInt64) -> Bool { true }
    }
    final class Legacy: MigrateVMAOps {
        let device: TestDevice
        init(_ device: TestDevice) { self.device = device }
        func allocAndCopy(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeMutableBufferPointer<MigratePFN>,
                          start: UInt64, end: UInt64) {
            device.copyToDevice(UnsafeMutableBufferPointer(mutating: src), dst, src.count)
        }
        func finalizeAndMap(vma: VMA, src: UnsafeBufferPointer<MigratePFN>, dst: UnsafeBufferPointer<MigratePFN>,
                            start: UInt64, end: UInt64) {}
    }

    let memory: PhysicalMemory
    let device: TestDevice
    let mm: AddressSpace
    var child: AddressSpace?
    var rng: SplitMix64
    var errors = 0, successes = 0
    let checked: Bool
    let notifierOps = NoOpNotifier()
    let file: PageCacheFile
    /// A VMA of an address space that no longer exists.
    let deadVMA: VMA

    var spaces: [AddressSpace] { [mm] + (child.map { [$0] } ?? []) }

    init(seed: UInt64, checked: Bool) throws {
        rng = SplitMix64(seed: seed)
        self.checked = checked
        memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 4096, checked: checked ? .on : .off)
        device = try TestDevice(memory: memory, pageCount: 256)
        mm = AddressSpace(memory: memory)
        file = PageCacheFile(memory: memory, pageCount: 8)
        var dying: AddressSpace? = AddressSpace(memory: memory)
        _ = try dying!.mmap(length: 4 * pageSize)
        deadVMA = dying!.vmaList[0]
        dying = nil
        for _ in 0..<3 {
            let a = try mm.mmap(length: 64 * pageSize)
            try mm.touch(a, length: 32 * pageSize, write: true)
        }
    }

    // MARK: Random arguments

    func pick<T>(_ xs: [T]) -> T { xs[Int(rng.next() % UInt64(xs.count))] }
    func chance(_ n: Int) -> Bool { rng.next() % UInt64(n) == 0 }

    var vmas: [VMA] { mm.vmaList }

    func address() -> UInt64 {
        var options: [UInt64] = [0, 1, 4096, 4095, UInt64.max, UInt64.max - 4095, 1 << 47, (1 << 47) - 4096, 1 << 63]
        if let v = vmas.randomElement(using: &rng) {
            options += [v.start, v.start + 4096, v.start + 17, v.end, v.end - 4096, v.end + 4096, v.start &- 4096]
            options += [v.start + UInt64(pick([0, 1, 2, 5, 31, 63])) * 4096] + Array(repeating: v.start, count: 3)
        }
        return pick(options)
    }

    func length() -> Int {
        pick([0, 1, -1, -4096, 4095, 4096, 8192, 3 * 4096, 16 * 4096, 64 * 4096, Int.max, Int.min, 1 << 47, 4096 * 4096])
    }

    func smallCount() -> Int { pick([-1, 0, 1, 2, 8, 64, 1 << 20, Int.max]) }

    func pfn() -> PFN {
        PFN(rawValue: pick([0, 1, UInt64(memory.ramPageCount - 1), UInt64(memory.ramPageCount), device.pagemap.firstPFN.rawValue,
                            device.pagemap.firstPFN.rawValue + 255, UInt64(memory.maxPFN - 1), UInt64(memory.maxPFN),
                            UInt64(memory.maxPFN) + 7, UInt64.max >> 6, UInt64.max]))
    }

    /// A PFN HostMM must recognise as unusable for a reference or lock change.
    func invalidPFN() -> PFN { PFN(rawValue: pick([UInt64(memory.maxPFN), UInt64(memory.maxPFN) + 1, UInt64.max >> 6, UInt64.max])) }

    func protection() -> Protection { Protection(rawValue: pick([0, 1, 2, 3, 4, 0xFF])) }

    // MARK: Calls

    /// Makes one random call; returns its description.
    func step() -> String {
        let calls: [(String, () throws(HostMMError) -> Void)] = [
            ("mmap", { [self] () throws(HostMMError) in
                let kind: MappingKind = pick([.anonymousPrivate, .anonymousShared, .special([]), .special(.mixedMap),
                                              .special([.read, .write]), .hugetlb, .file(file, pageOffset: pick([0, -1, 7, 100]), shared: chance(2))])
                _ = try mm.mmap(kind, length: length(), protection: protection(), at: chance(2) ? nil : address())
            }),
            ("munmap", { [self] () throws(HostMMError) in try mm.munmap(address(), length: length()) }),
            ("mprotect", { [self] () throws(HostMMError) in try mm.mprotect(address(), length: length(), protection: protection()) }),
            ("mremap", { [self] () throws(HostMMError) in
                _ = try mm.mremap(address(), oldLength: length(), newLength: length(),
                                  flags: MremapFlags(rawValue: pick([0, 1, 2, 3, 5, 7, 8, 0xFFFF])), newAddress: address())
            }),
            ("madvise", { [self] () throws(HostMMError) in
                try mm.madvise(address(), length: length(), advice: pick([.normal, .dontNeed, .free, .hugePage, .noHugePage]))
            }),
            ("read", { [self] () throws(HostMMError) in
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pick([0, 1, 4096, 8193]), alignment: 8)
                defer { buffer.deallocate() }
                try mm.read(at: address(), into: buffer)
            }),
            ("read(count:)", { [self] () throws(HostMMError) in _ = try mm.read(at: address(), count: pick([-1, 0, 7, 4096])) }),
            ("write", { [self] () throws(HostMMError) in try mm.write(at: address(), bytes: [UInt8](repeating: 7, count: pick([0, 1, 4097]))) }),
            ("touch", { [self] () throws(HostMMError) in try mm.touch(address(), length: pick([-1, 0, 1, 4096, 16 * 4096, 1 << 30]), write: chance(2)) }),
            ("pinUserPages", { [self] () throws(HostMMError) in
                let pins = try mm.pinUserPages(address(), count: smallCount(), write: chance(2), longterm: chance(2))
                memory.unpinUserPages(pins)
            }),
            ("getUserPages", { [self] () throws(HostMMError) in
                for page in try mm.getUserPages(address(), count: smallCount(), write: chance(2)) { memory.putPage(page) }
            }),
            ("makeDeviceExclusive", { [self] () throws(HostMMError) in
                let page = try mm.makeDeviceExclusive(address(), owner: chance(2) ? device.owner : nil)
                memory.unlockPage(page)
                memory.putPage(page)
            }),
            ("insertPage", { [self] () throws(HostMMError) in try mm.insertPage(address(), page: pfn()) }),
            ("remapPFNRange", { [self] () throws(HostMMError) in try mm.remapPFNRange(address(), pfn: pfn(), count: smallCount()) }),
            ("notifier insert", { [self] () throws(HostMMError) in
                try mm.notifiers.insert(start: address(), length: UInt64(bitPattern: Int64(length())), ops: notifierOps).remove()
            }),
            ("migrate_vma", { [self] () throws(HostMMError) in try migrate() }),
            ("migrate_device", { [self] () throws(HostMMError) in try migrateDevice() }),
            ("legacy migrate_vma", { [self] () throws(HostMMError) in try legacy() }),
            ("hmm_range_fault", { [self] () throws(HostMMError) in try rangeFault() }),
            ("page calls", { [self] () throws(HostMMError) in try pageCalls() }),
            ("pagemap calls", { [self] () throws(HostMMError) in try pagemapCalls() }),
            ("file", { [self] () throws(HostMMError) in
                try file.write(offset: pick([-1, 0, 4095, 8 * 4096, Int.max]), [1, 2, 3])
                _ = try file.read(offset: pick([-4096, 0, 4096 * 7 + 4095, Int.max]), count: pick([-1, 0, 3, 4096]))
            }),
            ("fork/exit", { [self] () throws(HostMMError) in
                if let c = child { c.exit(); child = nil } else { child = try mm.fork() }
            }),
        ]
        let (name, call) = pick(calls)
        do { try call(); successes += 1 } catch { errors += 1 }
        return name
    }

    func finish() {
        child?.exit()
        child = nil
    }

    /// The three steps with bad ranges, flags, arrays and destinations; a setup that
    /// succeeds is always finalized (the caller's obligation).
    func migrate() throws(HostMMError) {
        let n = pick([0, 1, 4, 64])
        try withFuzzBuffers(n, pick([0, 1, 4, 64])) { src, dst throws(HostMMError) in
            let vma: VMA? = pick([vmas.randomElement(using: &rng), nil, deadVMA])
            let start = pick([vma?.start ?? 0, address()])
            var args = MigrateVMA(vma: vma, start: start, end: pick([start &+ UInt64(n * 4096), address(), start]),
                                  src: src, dst: dst, pgmapOwner: chance(2) ? device.owner : nil,
                                  flags: MigrateVMA.Flags(rawValue: pick([0, 1, 2, 4, 7, 8, 0xFFFF])),
                                  faultPage: chance(4) ? pfn() : nil)
            try mm.mmapLock.withReadLock { () throws(HostMMError) in
                try migrateVMASetup(&args)
                defer { migrateVMAFinalize(&args) }
                if chance(2) { device.copyToDevice(args.src, args.dst, args.npages) }
                if args.npages > 0 && chance(2) {
                    if let p = args.dst[0].page { memory.unlockPage(p); memory.putPage(p) }
                    args.dst[0] = MigratePFN(pfn: pick([invalidPFN(), device.pagemap.firstPFN + 255, PFN(1)]))
                }
                do throws(HostMMError) { try migrateVMAPages(&args) } catch {
                    for i in 0..<args.npages { if let p = args.dst[i].page, memory.isValid(p), memory.isPageLocked(p), memory.refcount(p) > 0 { memory.unlockPage(p); memory.putPage(p) }; args.dst[i] = [] }
                    throw error
                }
            }
        }
    }

    func migrateDevice() throws(HostMMError) {
        let n = pick([0, 1, 8, 256])
        try withFuzzBuffers(n, n) { src, dst throws(HostMMError) in
            try memory.migrateDeviceRange(src, start: pick([device.pagemap.firstPFN, pfn()]), npages: pick([n, 0, -1, n + 1, Int.max]))
            let npages = src.count
            try? memory.migrateDevicePages(src: src, dst: dst, npages: pick([npages, -1, 0]))
            memory.migrateDeviceFinalize(src: src, dst: dst, npages: npages)
        }
        if checked {
            // Garbage arrays only where checked mode can tell (unchecked, a driver finalizing
            // arrays nobody set up corrupts memory in the kernel too).
            try withFuzzBuffers(4, 4) { src, dst throws(HostMMError) in
                for i in 0..<4 { src[i] = MigratePFN(pfn: pfn()).union(.migrate) }
                try? memory.migrateDevicePages(src: src, dst: dst, npages: pick([4, -1, Int.max]))
                memory.migrateDeviceFinalize(src: src, dst: dst, npages: pick([4, -1, Int.max]))
            }
        }
    }

    func legacy() throws(HostMMError) {
        try withFuzzBuffers(16, pick([0, 16])) { src, dst throws(HostMMError) in
            let vma: VMA? = pick([vmas.randomElement(using: &rng), nil, deadVMA])
            let start = pick([vma?.start ?? 0, address()])
            try mm.mmapLock.withReadLock { () throws(HostMMError) in
                try migrateVMA(ops: chance(4) ? nil : Legacy(device), vma: vma, start: start,
                               end: pick([start &+ 16 * 4096, address()]), src: src, dst: dst,
                               pgmapOwner: chance(2) ? device.owner : nil)
            }
        }
    }

    func rangeFault() throws(HostMMError) {
        let notifier = try mm.notifiers.insert(start: 0, length: 1 << 47, ops: notifierOps)
        defer { notifier.remove() }
        let n = pick([0, 1, 16])
        let pfns = UnsafeMutableBufferPointer<HMMPFN>.allocate(capacity: max(n, 1))
        defer { pfns.deallocate() }
        pfns.initialize(repeating: [])
        let start = address()
        var range = HMMRange(notifier: notifier, notifierSeq: notifier.readBegin(), start: start,
                             end: pick([start &+ UInt64(n * 4096), address(), start]),
                             hmmPFNs: UnsafeMutableBufferPointer(rebasing: pfns[0..<n]),
                             defaultFlags: pick([[], .requestFault, [.requestFault, .requestWrite], HMMPFN(rawValue: 0xFF)]),
                             pfnFlagsMask: pick([[], .requestFault]), devicePrivateOwner: chance(2) ? device.owner : nil)
        try mm.mmapLock.withReadLock { () throws(HostMMError) in try hmmRangeFault(&range) }
    }

    func pageCalls() throws(HostMMError) {
        let bad = invalidPFN()
        memory.putPage(bad)
        memory.getPage(bad)
        _ = memory.getPageUnlessZero(bad)
        _ = memory.trylockPage(bad)
        memory.unlockPage(pick([bad, pfn()]))               // unlocking an unlocked page is counted, not harmful
        memory.setZoneDeviceData(bad, 1)
        _ = (memory.refcount(bad), memory.mapcount(bad), memory.flags(bad), memory.index(bad), memory.isAnon(bad),
             memory.zoneDeviceData(bad), memory.bytes(bad), memory.zone(bad), memory.pagemap(of: bad), memory.isValid(bad))
        if let page = memory.allocPage(zeroed: chance(2)) {
            memory.putPage(page)
            memory.putPage(page)                              // underflow: counted and undone
        }
        memory.unpinUserPages([bad])
    }

    func pagemapCalls() throws(HostMMError) {
        if chance(2) {
            let other = try memory.registerPagemap(type: pick([.devicePrivate, .deviceCoherent]), pageCount: pick([-1, 0, 4, 1 << 40]),
                                                   owner: device.owner, ops: device)
            try memory.unregisterPagemap(other)
        } else if let page = device.allocPage() {
            defer { memory.unlockPage(page); memory.putPage(page) }
            try memory.zoneDevicePageInit(pick([invalidPFN(), PFN(0), PFN(1), page]))   // none is a free device page
        }
    }
}

extension HostMMFuzz {
    /// Runs `body` with buffers of `n` and `m` zeroed entries (empty buffers have no base address).
    func withFuzzBuffers(_ n: Int, _ m: Int, _ body: (UnsafeMutableBufferPointer<MigratePFN>, UnsafeMutableBufferPointer<MigratePFN>) throws(HostMMError) -> Void) throws(HostMMError) {
        let src: UnsafeMutableBufferPointer<MigratePFN> = n == 0 ? UnsafeMutableBufferPointer(start: nil, count: 0) : .allocate(capacity: n)
        let dst: UnsafeMutableBufferPointer<MigratePFN> = m == 0 ? UnsafeMutableBufferPointer(start: nil, count: 0) : .allocate(capacity: m)
        if n > 0 { src.initialize(repeating: []) }
        if m > 0 { dst.initialize(repeating: []) }
        defer { if n > 0 { src.deallocate() }; if m > 0 { dst.deallocate() } }
        try body(src, dst)
    }
}
