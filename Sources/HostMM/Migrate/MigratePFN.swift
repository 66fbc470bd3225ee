/// One entry of a migration's `src` or `dst` array: a PFN shifted left by
/// `MigratePFN.shift` with flag bits below (`unsigned long` with `MIGRATE_PFN_*`).
///
/// An `OptionSet` over the raw word, exactly as the kernel ORs flags into it:
/// `dst[i] = MigratePFN(pfn: page)`; `src[i].contains(.migrate)`; `src[i].page`.
@frozen
public struct MigratePFN: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `MIGRATE_PFN_VALID`: the entry carries a PFN.
    public static let valid = MigratePFN(rawValue: 1 << 0)
    /// `MIGRATE_PFN_MIGRATE`: the page (or hole) may be / was migrated.
    public static let migrate = MigratePFN(rawValue: 1 << 1)
    /// `MIGRATE_PFN_LOCKED` of the 2017 API: accepted in `dst` and ignored (today the
    /// destination page lock is simply required).
    public static let locked = MigratePFN(rawValue: 1 << 2)
    /// `MIGRATE_PFN_WRITE`: the source was mapped writable.
    public static let write = MigratePFN(rawValue: 1 << 3)
    /// `MIGRATE_PFN_ERROR` of the 2017 API: a `dst` marker meaning "could not migrate";
    /// treated like an empty destination.
    public static let error = MigratePFN(rawValue: 1 << 4)
    /// `MIGRATE_PFN_SHIFT`.
    public static let shift: UInt64 = 6

    /// `migrate_pfn()`: the PFN with `.valid` set.
    @inlinable public init(pfn: PFN) { rawValue = pfn.rawValue << MigratePFN.shift | 1 }

    /// `migrate_pfn_to_page()`: the PFN when `.valid` is set.
    @inlinable public var page: PFN? {
        rawValue & 1 != 0 ? PFN(rawValue: rawValue >> MigratePFN.shift) : nil
    }

    public var description: String {
        var parts: [String] = []
        if let page { parts.append(page.description) }
        if contains(.migrate) { parts.append("migrate") }
        if contains(.write) { parts.append("write") }
        if contains(.error) { parts.append("error") }
        return parts.isEmpty ? "0" : parts.joined(separator: "|")
    }
}
