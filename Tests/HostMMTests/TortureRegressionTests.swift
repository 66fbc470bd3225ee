import Foundation
import NIOConcurrencyHelpers
import Synchronization
import Testing
@testable import HostMM

/// Regressions the torture run (`dmem-bench torture`) found in HostMM, each reduced to a
/// bounded race between the two paths involved.
@Suite(.timeLimit(.minutes(1))) struct TortureRegressionTests {
    /// `zoneDevicePageInit` took the page's first reference, then `trylock`ed it; when an
    /// evictor (`migrateDeviceRange`) had slipped in between — its `get_page_unless_zero`
    /// succeeds once the count is 1 — the trylock failed and init *stored* 0 over the
    /// evictor's reference. The evictor then "migrated" a free page and its finalize
    /// dropped a reference from refcount 0, and the page was lost to its driver. Init now
    /// sleeps on the page lock like the kernel's `lock_page`.
    @Test func allocatingADevicePageWhileAnEvictorSweepsItKeepsEveryReference() throws {
        let memory = try PhysicalMemory(ramBytes: 16 << 20, maxDevicePages: 4096, checked: .on)
        let device = try TestDevice(memory: memory, pageCount: 4)
        let first = device.pagemap.firstPFN
        let stop = Atomic<Bool>(false)
        let evictor = Thread {
            withBuffers(4) { src, dst in
                while !stop.load(ordering: .relaxed) {
                    guard (try? memory.migrateDeviceRange(src, start: first, npages: 4)) != nil else { continue }
                    try? memory.migrateDevicePages(src: src, dst: dst, npages: 4)   // no destinations: all restored
                    memory.migrateDeviceFinalize(src: src, dst: dst, npages: 4)
                }
            }
        }
        evictor.start()
        var allocations = 0
        // 2 s and at least 1001 allocations, however slow the machine (Thread Sanitizer); at most 30 s.
        let start = ContinuousClock.now
        while (allocations <= 1000 || ContinuousClock.now - start < .seconds(2)) && ContinuousClock.now - start < .seconds(30) {
            guard let page = device.allocPage() else { continue }   // zoneDevicePageInit: ref 1, locked
            allocations += 1
            memory.unlockPage(page)
            memory.putPage(page)                                     // pageFree → free list
        }
        stop.store(true, ordering: .relaxed)
        while !evictor.isFinished { usleep(1000) }
        #expect(allocations > 1000)
        #expect(memory.checker?.countsByRule == [:], "\(memory.checker?.violations.prefix(3) ?? [])")
        #expect(memory.diagnostics.refcountUnderflowCount == 0)
        #expect(device.freePageCount == 4)                           // none lost
        #expect((0..<4).allSatisfy { memory.refcount(first + $0) == 0 && !memory.isPageLocked(first + $0) })
    }
}
