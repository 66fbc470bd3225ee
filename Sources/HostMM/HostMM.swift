// HostMM: the kernel memory-manager model.
//
// What a driver (DeviceEmu, a test driver) uses, in the order it meets it:
//
//   let memory = try PhysicalMemory(ramBytes: 1 << 30)          // RAM + struct page table
//   let pgmap  = try memory.registerPagemap(type: .devicePrivate, // memremap_pages
//                    pageCount: n, owner: PgmapOwner(driver), ops: driver)
//   let mm = AddressSpace(memory: memory)                        // mm_struct
//   let a  = try mm.mmap(length: 1 << 20)                        // VMAs
//   try mm.write(at: a, bytes: data)                             // CPU access, faults
//
//   // Migrate to device memory (nouveau order), mmap lock held for read throughout:
//   mm.mmapLock.readLock()
//   var args = MigrateVMA(vma: mm.findVMA(a), start: a, end: a + 512 * 4096,
//                         src: src, dst: dst, pgmapOwner: PgmapOwner(driver), flags: .selectSystem)
//   try migrateVMASetup(&args)
//   for i in 0..<args.npages where args.src[i].contains(.migrate) {
//       let page = /* a free device PFN */; try memory.zoneDevicePageInit(page)   // ref 1, locked
//       /* copy memory.bytes(args.src[i].page!) (or zeros for a hole) into VRAM */
//       args.dst[i] = MigratePFN(pfn: page)
//   }
//   try migrateVMAPages(&args)      // src[i] loses .migrate where it failed
//   /* wait for the copy fence; map in the device page table */
//   migrateVMAFinalize(&args)
//   mm.mmapLock.readUnlock()
//
//   // DevicePagemapOps.migrateToRAM(fault) does the same with faultPage: fault.page and
//   // .selectDevicePrivate, a RAM destination from memory.allocPage() + memory.lockPage().
//   // DevicePagemapOps.pageFree(pfn) gets every device page whose last reference goes.
//   // memory.migrateDeviceRange/Pages/Finalize evict by PFN without knowing the mappings.
//
// Address-space calls a device mirror meets (lib/test_hmm.c and hmm-tests): mmap / munmap /
// mprotect / mremap / madvise / fork / exit on `AddressSpace`; `makeDeviceExclusive` for
// atomics; `insertPage` for a driver's own mmap; `hmmRangeFault` under an
// `MMUIntervalNotifier`. VMAs and notifiers do not keep their address space alive: once it
// is gone, calls taking them throw instead of touching freed state.
//
// Lock order (outermost first): mmap lock → page lock → mapping-root (rmap) lock →
// page-table lock. Page locks are only trylocked while a page-table lock is held.
// Notifier callbacks and pgmap callbacks run with no page-table lock held.
