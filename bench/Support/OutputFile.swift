import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How result and trace files are written: a regular file (or a new one) atomically, through a
/// temporary file in its directory renamed over it, so a failed or interrupted write leaves no
/// truncated file and keeps an earlier one; anything else (`/dev/stdout`, a FIFO, a symlink,
/// a file in a directory this process cannot write) is written in place, never replaced.
///
/// Threads: stateless; any thread.
enum OutputFile {
    /// Writes `data` to `path` (see the type's comment).
    static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        try data.write(to: url, options: isReplaceable(path) ? .atomic : [])
    }

    /// The path whose write permission a write to `path` needs: its directory when the file
    /// is replaced by a rename, else the file itself.
    static func permissionPath(for path: String) -> String {
        guard isReplaceable(path) else { return path }
        return URL(fileURLWithPath: path).deletingLastPathComponent().path
    }

    /// True when `path` does not exist, or is a regular file (not a symlink, device or FIFO)
    /// in a directory this process may create files in.
    static func isReplaceable(_ path: String) -> Bool {
        var status = stat()
        guard lstat(path, &status) == 0 else { return true }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return (status.st_mode & S_IFMT) == S_IFREG && access(directory, W_OK) == 0
    }
}
