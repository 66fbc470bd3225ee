import Foundation

/// The kernel's transparent-huge-page policy for memfds and other internal shmem
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`, the `shmem_huge` setting).
///
/// VRAM pools read it to decide how to populate: under `advise` the kernel gives
/// 2 MiB folios only to mappings advised `MADV_HUGEPAGE`, so a pool is populated
/// through its advised mapping; `always`/`within_size`/`force` give them to plain
/// `fallocate` too; `never`/`deny` give none (4 KiB pages: every `pwritev` into the
/// pool then pays the kernel's per-page shmem work).
///
/// Threads: a value; `current` is read once per process.
public enum ShmemHugePages: String, Sendable, CaseIterable {
    case always
    case withinSize = "within_size"
    case advise
    case never
    case deny
    case force
    /// The file is missing (kernel without THP) or unreadable.
    case unknown

    /// The setting of this machine, read once.
    public static let current = read()

    /// Whether `MADV_HUGEPAGE` on a pool's mapping is what decides its page size.
    public var honoursAdvice: Bool { self == .advise }

    /// Whether memfds can get huge pages at all under this setting.
    public var allowsHugePages: Bool { [.always, .withinSize, .advise, .force].contains(self) }

    /// Reads the setting from sysfs.
    static func read(path: String = "/sys/kernel/mm/transparent_hugepage/shmem_enabled") -> ShmemHugePages {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return .unknown }
        return parse(text)
    }

    /// The bracketed word of the sysfs text, e.g. `always within_size advise [never] deny force`.
    static func parse(_ text: String) -> ShmemHugePages {
        guard let open = text.firstIndex(of: "["), let close = text[open...].firstIndex(of: "]") else { return .unknown }
        return ShmemHugePages(rawValue: String(text[text.index(after: open)..<close])) ?? .unknown
    }
}
