import Foundation

/// The `--vram-dir` / `vram-dir=` value checked before a run: VRAM's unnamed files are
/// created in it (`VRAMPool.Layout.directory`), so it must be an existing directory.
enum VRAMDirectory {
    /// Why `path` cannot hold VRAM's files, or nil (also for nil: memfds).
    static func problem(_ path: String?) -> String? {
        guard let path else { return nil }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            return "vram-dir \(path) does not exist (mount a tmpfs there first, see README \"Huge pages for VRAM\")"
        }
        return isDirectory.boolValue ? nil : "vram-dir \(path) is not a directory"
    }
}
