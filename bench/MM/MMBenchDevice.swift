import Foundation
import HostMM
import NIOConcurrencyHelpers

/// The benchmark's driver: a device-private pgmap with a no-op copy to the device and a
/// memcpy copy back (from a small VRAM ring, so 4 Mi device pages need no 16 GiB buffer).
final class MMBenchDevice: DevicePagemapOps, @unchecked Sendable {
    let memory: PhysicalMemory
    private(set) var pagemap: DevicePagemap!
    private let lock = NIOLock()
    private var freeList: [PFN]
    let vram: UnsafeMutableRawPointer
    let vramPages = 4096
    private var src: UnsafeMutableBufferPointer<MigratePFN>
    private var dst: UnsafeMutableBufferPointer<MigratePFN>
    var owner: PgmapOwner { PgmapOwner(self) }

    init(memory: PhysicalMemory, pageCount: Int) throws {
        self.memory = memory
        vram = .allocate(byteCount: vramPages * 4096, alignment: 4096)
        memset(vram, 0x5A, vramPages * 4096)
        src = .allocate(capacity: 1)
        dst = .allocate(capacity: 1)
        freeList = []
        pagemap = try memory.registerPagemap(type: .devicePrivate, pageCount: pageCount, owner: PgmapOwner(self), ops: self)
        freeList = Array(pagemap.pfns.reversed())
        freeList.reserveCapacity(pageCount)
    }

    deinit {
        vram.deallocate()
        src.deallocate()
        dst.deallocate()
    }

    func vramBytes(_ pfn: PFN) -> UnsafeMutableRawPointer {
        vram + ((pfn - pagemap.firstPFN) % vramPages) * 4096
    }

    /// The driver's half of a migration to VRAM: a locked device page per migrating entry.
    func allocateDestinations(_ src: UnsafeMutableBufferPointer<MigratePFN>,
                              _ dst: UnsafeMutableBufferPointer<MigratePFN>, _ n: Int) throws {
        try lock.withLock {
            for i in 0..<n where src[i].contains(.migrate) {
                guard let page = freeList.popLast() else { break }
                try memory.zoneDevicePageInit(page)
                dst[i] = MigratePFN(pfn: page)
            }
        }
    }

    func pageFree(_ pfn: PFN, pagemap: DevicePagemap) { lock.withLock { freeList.append(pfn) } }

    func migrateToRAM(_ fault: VMFault) -> VMFaultResult {
        src.update(repeating: [])
        dst.update(repeating: [])
        var args = MigrateVMA(vma: fault.vma, start: fault.address, end: fault.address + 4096, src: src, dst: dst,
                              pgmapOwner: owner, flags: .selectDevicePrivate, faultPage: fault.page)
        do { try migrateVMASetup(&args) } catch { return .sigbus }
        guard args.cpages > 0 else { return .done }
        if let page = src[0].page, src[0].contains(.migrate) {
            guard let ram = memory.allocPage() else { return .oom }
            memory.lockPage(ram)
            memcpy(memory.bytes(ram)!, vramBytes(page), 4096)
            dst[0] = MigratePFN(pfn: ram)
        }
        do { try migrateVMAPages(&args) } catch { return .sigbus }
        migrateVMAFinalize(&args)
        return .done
    }
}
