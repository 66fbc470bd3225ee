public import SystemPackage

/// Which descriptors a `FaultInjectingBackend` disturbs, and how. Seeded: the
/// same plan on the same sequence of descriptors injects the same faults.
///
/// Descriptors are counted per channel from 0, in execution order (enqueue
/// order within a batch, batches in submit order). The first rule whose
/// trigger matches a descriptor decides its fate.
public struct FaultPlan: Sendable, Equatable {
    public enum Trigger: Sendable, Equatable {
        /// Exactly the descriptor with this 0-based channel-wide number.
        case nth(Int)
        /// Every descriptor whose number is a multiple of `n` minus one (the n-th, 2n-th, …).
        case every(Int)
        /// Each descriptor independently with this probability (0…1), from the seeded generator.
        case rate(Double)
    }

    public enum Action: Sendable, Equatable {
        /// Copy nothing; the descriptor fails with this errno and 0 bytes done.
        case fail(Errno)
        /// Copy only the first `bytes` bytes (at most length − 1); fails with EIO and that prefix.
        case shortCopy(bytes: Int)
        /// Copy correctly, but only after `delay`, so it completes after later descriptors.
        case delay(Duration)
        /// Silent data corruption, as over a link without ECC: copy (or fill) in full, then
        /// flip one byte of the destination (XOR 0xFF) at an offset within the descriptor's
        /// length drawn from the plan's seed, the channel and the descriptor's number, and
        /// report the descriptor as completed. No error reaches the fence, its callbacks or
        /// `failures`: only a check of the bytes can see it.
        case corrupt
    }

    public struct Rule: Sendable, Equatable {
        public var trigger: Trigger
        public var action: Action
        public init(_ trigger: Trigger, _ action: Action) {
            self.trigger = trigger
            self.action = action
        }
    }

    public var seed: UInt64
    public var rules: [Rule]

    public init(seed: UInt64 = 0x5eed, rules: [Rule]) {
        self.seed = seed
        self.rules = rules
    }
}
