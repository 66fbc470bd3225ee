/// What one torture worker did and saw; summed over workers for the report.
///
/// Threads: owned by one worker while it runs, read after it is joined.
struct TortureStats: Sendable {
    var operations = 0
    var bytesVerified = 0
    /// Pages whose bytes differed from the shadow model.
    var mismatches = 0
    /// CPU accesses that got SIGBUS, and GPU accesses EFAULT through a CPU fault, because
    /// a fault's copy failed by injection: the data stayed on the device; the access is retried.
    var sigbus = 0
    /// Calls refused for a transient reason: the device was suspended, or an access was
    /// invalidated too often (EBUSY).
    var refused = 0
    /// Errors no operation should produce (reported in full on stderr).
    var unexpectedErrors = 0
    /// Pages a check could not read after every retry.
    var unverified = 0
    var forks = 0
    var remaps = 0

    mutating func add(_ o: TortureStats) {
        operations += o.operations
        bytesVerified += o.bytesVerified
        mismatches += o.mismatches
        sigbus += o.sigbus
        refused += o.refused
        unexpectedErrors += o.unexpectedErrors
        unverified += o.unverified
        forks += o.forks
        remaps += o.remaps
    }
}

/// The operations a worker draws from, with their weights.
enum TortureOp: CaseIterable, Sendable {
    case cpuWrite, cpuRead, gpuWrite, gpuRead, gpuAtomic, migrateToDevice, migrateToRAM
    case fork, remap, dontNeed, evictAll, suspendResume

    var weight: Int {
        switch self {
        case .cpuWrite: return 20
        case .cpuRead: return 14
        case .gpuWrite: return 10
        case .gpuRead: return 14
        case .gpuAtomic: return 3
        case .migrateToDevice: return 14
        case .migrateToRAM: return 6
        case .fork: return 2
        case .remap: return 2
        case .dontNeed: return 3
        case .evictAll: return 1
        case .suspendResume: return 1
        }
    }

    static let totalWeight = allCases.reduce(0) { $0 + $1.weight }

    /// The operation for a draw in `0 ..< totalWeight`.
    static func pick(_ draw: Int) -> TortureOp {
        var left = draw
        for op in allCases {
            if left < op.weight { return op }
            left -= op.weight
        }
        return .cpuRead
    }
}
