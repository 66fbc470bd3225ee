import DeviceEmu
import HostMM

/// The operations a torture worker performs, each followed by a read-back of what it touched.
extension TortureWorker {
    func perform(_ op: TortureOp) {
        let r = random(regions.count)
        switch op {
        case .cpuWrite: write(r, random(pagesPerRegion), via: .cpu)
        case .gpuWrite: write(r, random(pagesPerRegion), via: .gpu)
        case .cpuRead, .gpuRead:
            let (p, n) = span(r, max: 8)
            for k in p..<p + n { verify(r, k, via: op == .cpuRead ? .cpu : .gpu) }
        case .gpuAtomic:
            let p = random(pagesPerRegion)
            do { _ = try space.atomicAdd(at: address(r, p) + UInt64(random(512) * 8), 0) } catch { transient(error) }
            verify(r, p, via: .gpu)
        case .migrateToDevice:
            let (p, n) = span(r, max: 256)
            do { try world.gpu.migrateToDevice(mm, range: address(r, p) ..< address(r, p + n)) } catch { transient(error) }
            for k in p..<p + n { verify(r, k, via: .gpu) }
        case .migrateToRAM:
            let (p, n) = span(r, max: 256)
            do { try world.gpu.migrateRangeToRAM(mm, range: address(r, p) ..< address(r, p + n)) } catch { transient(error) }
            for k in p..<p + n { verify(r, k, via: .cpu) }
        case .fork: forkAndCheck(r)
        case .remap: remap(r)
        case .dontNeed:
            let (p, n) = span(r, max: 16)
            do {
                try mm.madvise(address(r, p), length: n * pageSize, advice: .dontNeed)
                for k in p..<p + n { regions[r].versions[k] = 0 }
            } catch { transient(error) }
            for k in p..<p + n { verify(r, k, via: random(2) == 0 ? .cpu : .gpu) }
        case .evictAll:
            world.gpu.evictAll()
            for _ in 0..<4 { verify(r, random(pagesPerRegion), via: .cpu) }
        case .suspendResume:
            do { try world.gpu.suspend() } catch { transient(error) }
            do { try world.gpu.resume() } catch { transient(error) }
            verify(r, random(pagesPerRegion), via: .gpu)
        }
    }

    /// A random run of at most `max` pages of region `r`.
    func span(_ r: Int, max: Int) -> (Int, Int) {
        let p = random(pagesPerRegion)
        return (p, 1 + random(min(max, pagesPerRegion - p)))
    }

    /// Writes the next version of page `p` (a CPU store or a GPU store), then reads it back.
    func write(_ r: Int, _ p: Int, via: Via) {
        let next = regions[r].versions[p] + 1
        TorturePattern.fill(page, key: key(r, p, version: next))
        let bytes = UnsafeRawBufferPointer(start: page, count: pageSize)
        do {
            if via == .cpu { try mm.write(at: address(r, p), from: bytes) } else { try space.write(at: address(r, p), from: bytes) }
            regions[r].versions[p] = next   // one page, one fault: the store happened whole or not at all
        } catch {
            transient(error)
        }
        verify(r, p, via: random(2) == 0 ? .cpu : .gpu)
    }

    /// Forks, checks the child sees the parent's pages, breaks copy-on-write in the child,
    /// lets the child's GPU view migrate some shared pages, and checks the parent is unchanged.
    func forkAndCheck(_ r: Int) {
        let child: AddressSpace
        do { child = try mm.fork() } catch { transient(error); return }
        stats.forks += 1
        defer { child.exit() }
        let (p, n) = span(r, max: 16)
        for k in p..<p + n { verify(r, k, via: .cpu, in: child) }
        // The child's own write: a content the parent never has.
        let childKey = TorturePattern.key(worker: index, generation: regions[r].generation | 0x8000_0000, page: p, version: 1)
        TorturePattern.fill(page, key: childKey)
        do {
            try child.write(at: address(r, p), from: UnsafeRawBufferPointer(start: page, count: pageSize))
            verify(r, p, via: .cpu, in: child, expect: childKey)
        } catch {
            transient(error)
        }
        if random(2) == 0, let view = try? world.gpu.bind(child) {
            defer { world.gpu.unbind(child) }
            do { try world.gpu.migrateToDevice(child, range: address(r, p) ..< address(r, p + n)) } catch { transient(error) }
            let buffer = UnsafeMutableRawBufferPointer(start: page, count: pageSize)
            if n > 1 {
                do {
                    try view.read(at: address(r, p + 1), into: buffer)
                    stats.bytesVerified += pageSize
                    if !TorturePattern.matches(page, key: key(r, p + 1)) {
                        stats.mismatches += 1
                        world.logMismatch("worker \(index) child GPU view region \(r) page \(p + 1): not the parent's version \(regions[r].versions[p + 1])")
                    }
                } catch {
                    transient(error)
                }
            }
        }
        for k in p..<p + n { verify(r, k, via: .cpu) }
    }

    /// Unmaps region `r` and maps a fresh one in its place in the shadow.
    func remap(_ r: Int) {
        do {
            try mm.munmap(regions[r].address, length: pagesPerRegion * pageSize)
            regions[r] = try mapRegion()
            stats.remaps += 1
        } catch {
            transient(error)
            return
        }
        verify(r, random(pagesPerRegion), via: .cpu)
    }

    /// The end-of-run check: every page, by the CPU.
    func verifyAll() {
        for r in regions.indices {
            for p in 0..<pagesPerRegion { verify(r, p, via: .cpu) }
        }
    }

    /// Unmaps everything and exits the process.
    func tearDown() {
        for region in regions { try? mm.munmap(region.address, length: pagesPerRegion * pageSize) }
        world.gpu.unbind(mm)
        mm.exit()
    }
}
