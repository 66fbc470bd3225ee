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

    /// Why `write` to `path` would fail, or nil, found without touching `path`: a temporary
    /// file is created and removed in its directory (the rename needs that; permission bits
    /// alone say nothing to root, nor about /proc or a read-only mount), or an existing
    /// device or symlink is checked for write access.
    static func cannotWrite(_ path: String) -> String? {
        guard isReplaceable(path) else {
            return access(path, W_OK) == 0 ? nil : String(cString: strerror(errno))
        }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var template = Array((directory + "/.dmem-bench-probe-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        close(fd)
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        return nil
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
