import DMAEngine
import NIOConcurrencyHelpers

/// The device's copy channels, checked out by one batch from its first enqueue to its
/// `submit()` (a channel's batch is "whatever was enqueued before submit", so two
/// threads must not fill one at once). The fence outlives the checkout: a batch gives its
/// channel back before waiting. New channels are made on demand, so concurrent
/// migrations and CPU faults never wait for each other's enqueues.
///
/// Threads: any.
final class ChannelPool: @unchecked Sendable {
    private let engine: DMAEngine
    private let backend: CopyBackendKind?
    private let name: String
    private let lock = NIOLock()
    private var idle: [DMAChannel] = []   // guarded by lock
    private var made = 0                  // guarded by lock
    private var everyChannel: [DMAChannel] = []  // guarded by lock

    init(engine: DMAEngine, backend: CopyBackendKind?, name: String) throws(DeviceError) {
        self.engine = engine
        self.backend = backend
        self.name = name
        do { idle.append(try engine.makeChannel(name: "\(name)0", backend: backend)) } catch { throw .dma(error) }
        everyChannel = idle
        made = 1
    }

    /// Channels created so far.
    var channelCount: Int { lock.withLock { made } }

    func checkout() throws(DeviceError) -> DMAChannel {
        if let ch = lock.withLock({ idle.popLast() }) { return ch }
        let n = lock.withLock { () -> Int in made += 1; return made - 1 }
        let channel: DMAChannel
        do { channel = try engine.makeChannel(name: "\(name)\(n)", backend: backend) } catch { throw .dma(error) }
        lock.withLock { everyChannel.append(channel) }
        return channel
    }

    /// The fixed-buffer status of every channel made so far, summed (operations,
    /// pieces) with the first failure reported.
    var fixedBuffers: FixedBufferStatus { .combined(lock.withLock { everyChannel }.map(\.fixedBuffers)) }

    func checkin(_ channel: DMAChannel) {
        lock.withLock { idle.append(channel) }
    }
}

extension ChannelPool {
    /// The backend of the small-CPU-fault path for a device whose channels use `kind`:
    /// the same backend with its copier replaced by a synchronous memcpy through the
    /// mappings (fault-injection and link-model wrappers kept, so injected failures and
    /// the modelled bus still apply); nil when `kind` already copies on the CPU or is a
    /// custom backend the device cannot see into.
    static func cpuCopyKind(_ kind: CopyBackendKind) -> CopyBackendKind? {
        switch kind {
        case .ioUring, .mappedWorkers: return .memcpy
        case .memcpy, .custom: return nil
        case .faultInjecting(let plan, let inner): return cpuCopyKind(inner).map { .faultInjecting(plan, wrapping: $0) }
        case .linkModel(let link, let inner): return cpuCopyKind(inner).map { .linkModel(link, wrapping: $0) }
        }
    }
}

