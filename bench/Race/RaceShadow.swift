import HostMM

/// The shadow model's rules for the target page when a flow and a racing action may both
/// write it (the GPU stores of `gpu-write` and `gpu-atomic` against the actions' stores,
/// DONTNEED and munmap). Each writer's effect is its own (`RaceFlow.targetAfter`,
/// `RaceAction.targetAfter`); this is the one place they are combined.
///
/// The page's writers serialize: a CPU store reaches a page the GPU maps in VRAM or holds
/// device-exclusive only through a fault that first takes it back (`migrate_to_ram`,
/// `restore_exclusive_pte` under the page lock), a GPU access runs under the mirror lock
/// that the MMU notifier's invalidation (DONTNEED, munmap, mprotect) takes too, and a
/// store racing a store of the same marker leaves the marker whatever the interleaving.
/// So the page ends as one writer applied after the other, in either order: the probe
/// holds the driver before the flow's own access (a fault's steps all come before its
/// replay), but an action that finishes `after` the hold may come later.
///
/// Threads: pure functions; any thread.
enum RaceShadow {
    /// What the target may hold at the end, when it started as `base`. A writer that
    /// failed (a documented error) changed nothing.
    static func target(_ base: RacePage, flow: RaceFlow, flowTookEffect: Bool,
                       action: RaceAction, actionTookEffect: Bool) -> [RacePage] {
        let f = { (p: RacePage) in flowTookEffect ? flow.targetAfter(p) : p }
        let a = { (p: RacePage) in actionTookEffect ? action.targetAfter(p) : p }
        // A flow's access that comes after `mremap-dontunmap` lands in the old, emptied
        // range (`inOldRange`), not on the moved page.
        if action == .mremapDontUnmap && actionTookEffect { return unique([base, f(base)]) }
        return unique([a(f(base)), f(a(base))])
    }

    /// What the target's old address reads after `mremap-dontunmap` left the old range
    /// mapped and empty: zeros, or zeros the flow's access wrote to if it came after.
    static func inOldRange(flow: RaceFlow, flowTookEffect: Bool) -> [RacePage] {
        unique([.zeros, flowTookEffect ? flow.targetAfter(.zeros) : .zeros])
    }

    /// What the action's read of the target may see: the start, or the flow's store if the
    /// flow got there first.
    static func seenByAction(_ base: RacePage, flow: RaceFlow) -> [RacePage] { unique([base, flow.targetAfter(base)]) }

    /// What the flow's access to the target may see (a fault flow's read, the old word of
    /// `gpu-atomic`): the start, or what the action left if it got there first.
    static func seenByFlow(_ base: RacePage, action: RaceAction) -> [RacePage] {
        unique([base, action.targetAfter(base)] + (action == .mremapDontUnmap ? [.zeros] : []))
    }

    /// True when a read of the target racing the other side's store of the marker (the
    /// flow's GPU read against `cpu-write`, the action's `cpu-read` against the flow's GPU
    /// store, …) may see that store half done. The serialization above holds where the
    /// GPU reaches the page through VRAM the CPU cannot map; it does not where both map
    /// the same bytes and access them in place: device-coherent VRAM (`--memory
    /// coherent`), system pages a GPU fault maps (`--gpu-fault map`, `thrashing`), the
    /// system pages dmirror's READ and WRITE copy (`--driver mirror`). Nothing in the
    /// kernel orders a CPU store against a device load of a page both map: the read is
    /// then a word-wise mix of before and after (`isTornMix`), as hardware's would be.
    static func readMayTear(_ c: RaceConfiguration, storer: RaceAction) -> Bool {
        guard storer == .cpuWrite || storer == .gpuWrite else { return false }
        return c.memory == .coherent || c.gpuFault != .migrate || c.driver == .mirror
    }

    /// The same for the action's read racing the flow's store (`gpu-write`'s marker).
    static func readMayTear(_ c: RaceConfiguration, storer: RaceFlow, reader: RaceAction) -> Bool {
        guard storer == .gpuWrite || storer == .mirrorWrite, reader == .cpuRead || reader == .gpuRead else { return false }
        return c.memory == .coherent || c.gpuFault != .migrate || c.driver == .mirror
    }

    /// True when `bytes`, a page read while one store raced it, is a mix of what the page
    /// held before and after that store (`seen`), every 8-byte word from one of them.
    static func isTornMix(_ bytes: [UInt8], of seen: [RacePage], page: Int) -> Bool {
        let candidates = seen.compactMap { $0.bytes(page: page) }
        guard bytes.count == pageSize, candidates.count > 1 else { return false }
        return stride(from: 0, to: pageSize, by: 8).allSatisfy { w in
            candidates.contains { $0[w ..< w + 8] == bytes[w ..< w + 8] }
        }
    }

    /// What a forked child's copy of the target holds: the fork copies the page before or
    /// after the flow's store; `cow-write-child` then stores the marker in the child (the
    /// other actions never write the child: `cow-write`'s store in the parent breaks COW).
    static func inChild(_ base: RacePage, flow: RaceFlow, flowTookEffect: Bool,
                        action: RaceAction, actionTookEffect: Bool) -> [RacePage] {
        if action == .cowWriteChild && actionTookEffect { return [.marker] }
        return unique([base, flowTookEffect ? flow.targetAfter(base) : base])
    }

    private static func unique(_ pages: [RacePage]) -> [RacePage] {
        pages.reduce(into: []) { if !$0.contains($1) { $0.append($1) } }
    }
}
