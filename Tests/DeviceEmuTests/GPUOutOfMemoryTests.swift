import DeviceEmu
import HostMM
import Testing

/// A GPU fault that needs a RAM page when none is left fails like the kernel's
/// `hmm_range_fault` (-EFAULT on `VM_FAULT_OOM`), maps nothing, and works once RAM is back.
@Suite struct GPUOutOfMemoryTests {
    @Test func gpuWriteFaultOnAHoleWithNoRAMLeftFaults() throws {
        let memory = try makeMemory(mib: 8)
        var policy = MigrationPolicy()
        policy.gpuFault = .mapSystemMemory(pages: 1)
        let gpu = try makeDevice(memory, vramMiB: 4, policy: policy)
        defer { try? gpu.shutdown() }
        let mm = AddressSpace(memory: memory)
        let a = try mm.mmap(length: 4 * pageSize)
        let space = try gpu.bind(mm)
        var held: [PFN] = []
        while let p = memory.allocPage() { held.append(p) }
        #expect(try space.read(at: a, count: 4) == [0, 0, 0, 0])   // the zero page: no allocation
        #expect(throws: DeviceError.fault(address: a)) { try space.write(at: a, bytes: [1, 2, 3]) }
        #expect(!space.entry(at: a).isWritable)   // still the zero page, read-only
        for p in held { memory.putPage(p) }
        try space.write(at: a, bytes: [1, 2, 3])
        #expect(try mm.read(at: a, count: 3) == [1, 2, 3])
    }
}
