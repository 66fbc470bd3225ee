/// The wire between host and device, as a bandwidth and a latency: what a
/// `CopyBackendKind.linkModel` wrapper makes host↔device copies cost on top of
/// the emulation's own, to mimic PCIe or NVLink.
///
/// The link is full duplex: host-to-device and device-to-host bytes each have
/// `bytesPerSecond` of their own, and each direction carries batches one after
/// the other in submit order. A batch's fence signals `latency` after the link
/// carried its last byte (a DMA job's doorbell-to-completion overhead, paid once
/// per submitted batch), or when the copies themselves finish, whichever is later.
/// Device-local work (D2D copies, fills) and host-to-host copies do not cross
/// the link and cost nothing extra.
///
/// The presets are round figures of achievable DMA throughput, not the raw
/// signalling rates: PCIe 4.0 x16 ≈ 26 GB/s, PCIe 5.0 x16 ≈ 52 GB/s, NVLink 4 /
/// NVLink-C2C ≈ 450 GB/s per direction.
///
/// Threads: a value; any thread.
public struct LinkModel: Sendable, Equatable, CustomStringConvertible {
    /// Bytes per second in each direction.
    public var bytesPerSecond: Double
    /// Added to every batch that crosses the link.
    public var latency: Duration

    public init(bytesPerSecond: Double, latency: Duration) {
        self.bytesPerSecond = bytesPerSecond
        self.latency = latency
    }

    public init(gigabytesPerSecond: Double, latency: Duration) {
        self.init(bytesPerSecond: gigabytesPerSecond * 1e9, latency: latency)
    }

    public static let pcie4 = LinkModel(gigabytesPerSecond: 26, latency: .microseconds(2))
    public static let pcie5 = LinkModel(gigabytesPerSecond: 52, latency: .microseconds(2))
    public static let nvlink = LinkModel(gigabytesPerSecond: 450, latency: .microseconds(1))

    /// The presets by name: `pcie4`, `pcie5`, `nvlink`.
    public static let presets: [(name: String, model: LinkModel)] = [("pcie4", .pcie4), ("pcie5", .pcie5), ("nvlink", .nvlink)]

    public var description: String {
        let gbps = bytesPerSecond / 1e9
        let gb = gbps == gbps.rounded() ? String(Int(gbps)) : String(gbps)
        return "\(gb) GB/s + \(latency.clampedNanoseconds / 1000) µs"
    }

    /// Nanoseconds the link needs for `bytes`; throws for a model that cannot carry anything.
    func transferNanoseconds(_ bytes: Int) -> UInt64 {
        UInt64(min(Double(bytes) / bytesPerSecond * 1e9, 8.64e13))  // at most a day per batch
    }

    func validated() throws(DMAError) -> LinkModel {
        guard bytesPerSecond.isFinite, bytesPerSecond > 0 else {
            throw .invalidArgument("link bandwidth must be a positive number of bytes per second (got \(bytesPerSecond))")
        }
        guard latency >= .zero else { throw .invalidArgument("link latency must not be negative (got \(latency))") }
        return self
    }
}
