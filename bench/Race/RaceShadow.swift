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
