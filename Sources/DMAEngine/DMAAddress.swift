/// Names one registered memory region of a `DMAEngine` (host RAM or a VRAM pool).
///
/// Ids are never reused during an engine's life, so a stale id fails cleanly
/// with `.unknownRegion` instead of reaching another region.
@frozen
public struct RegionID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "region#\(rawValue)" }
}

/// A device-visible address: a region and a byte offset inside it.
///
/// Models the `dma_addr_t` a driver hands to its copy engine, split so that
/// the engine can check bounds per region.
@frozen
public struct DMAAddress: Hashable, Sendable, CustomStringConvertible {
    public var region: RegionID
    public var offset: Int

    @inlinable
    public init(region: RegionID, offset: Int) {
        self.region = region
        self.offset = offset
    }

    /// The address `bytes` further on in the same region.
    @inlinable
    public func advanced(by bytes: Int) -> DMAAddress {
        DMAAddress(region: region, offset: offset &+ bytes)
    }

    /// `region#N+0x1000`; an offset below zero (never valid: `enqueue…` refuses it) as `-0x…`.
    public var description: String {
        offset < 0 ? "\(region)-0x\(String(offset.magnitude, radix: 16))" : "\(region)+0x\(String(offset, radix: 16))"
    }
}

/// A channel-local, monotonically increasing descriptor number (DPDK dmadev's `ring_idx`).
///
/// Returned by every `enqueue…`; `DMAChannel.lastCompletedTicket` and
/// `DescriptorFailure.ticket` speak in the same numbers.
@frozen
public struct DMATicket: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public static func < (a: DMATicket, b: DMATicket) -> Bool { a.rawValue < b.rawValue }
}

/// The direction of a copy, derived from the kinds of its two regions.
public enum CopyDirection: String, Sendable, CaseIterable {
    case hostToDevice = "h2d"
    case deviceToHost = "d2h"
    case deviceToDevice = "d2d"
    case hostToHost = "h2h"
}
