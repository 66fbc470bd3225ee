import Foundation
import DMAEngine
#if canImport(Glibc)
import Glibc
#endif

/// The facts about the machine and build that make a result comparable: written into
/// every JSON (`machine` object) and CSV (`machine_*` columns).
///
/// Threads: immutable value; `gather()` may run on any thread (it starts short child processes).
struct MachineFacts: Sendable {
    /// In a stable order: cores, cpu_model, memory_bytes, kernel, os, liburing, git_revision,
    /// git_dirty, swift_version, build, date.
    private(set) var fields: [(name: String, value: RunRecord.Value)]

    init(fields: [(name: String, value: RunRecord.Value)]) { self.fields = fields }

    subscript(name: String) -> RunRecord.Value? { fields.first { $0.name == name }?.value }

    /// Reads the facts of this machine; anything that cannot be found reads `unknown`.
    static func gather(date: Date = Date()) -> MachineFacts {
        let git = sourceTreeRevision()
        return MachineFacts(fields: [
            ("cores", .int(ProcessInfo.processInfo.activeProcessorCount)),
            ("cpu_model", .string(cpuModel() ?? "unknown")),
            ("memory_bytes", .int(Int(clamping: ProcessInfo.processInfo.physicalMemory))),
            ("kernel", .string(kernelRelease() ?? "unknown")),
            ("os", .string(osName() ?? "unknown")),
            ("liburing", .string(liburingVersion() ?? "unknown")),
            ("shmem_thp", .string(ShmemHugePages.current.rawValue)),
            ("git_revision", .string(git?.revision ?? "unknown")),
            ("git_dirty", git.map { .bool($0.dirty) } ?? .string("unknown")),
            ("swift_version", .string(compilerVersion)),
            ("build", .string(buildConfiguration)),
            ("date", .string(ISO8601DateFormatter().string(from: date))),
        ])
    }

    var json: String {
        "{" + fields.map { "\(JSONText.quote($0.name)):\($0.value.json)" }.joined(separator: ",") + "}"
    }

    // MARK: - Sources of each fact

    static func kernelRelease() -> String? {
        var name = utsname()
        guard uname(&name) == 0 else { return nil }
        return withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    static func cpuModel() -> String? {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        return value(of: "model name", in: text, separator: ":")
    }

    static func osName() -> String? {
        guard let text = try? String(contentsOfFile: "/etc/os-release", encoding: .utf8) else { return nil }
        return value(of: "PRETTY_NAME", in: text, separator: "=")?.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
    }

    /// The installed liburing package version (Debian/Ubuntu `dpkg`), e.g. `2.3-3`.
    static func liburingVersion() -> String? {
        for package in ["liburing-dev", "liburing2"] {
            if let version = run(["dpkg-query", "-W", "-f=${Version}", package]), !version.isEmpty { return version }
        }
        return nil
    }

    /// The commit of the source tree this binary was built from, and whether it has local changes.
    static func sourceTreeRevision() -> (revision: String, dirty: Bool)? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().path
        guard let revision = run(["git", "-C", root, "rev-parse", "HEAD"]), !revision.isEmpty else { return nil }
        let status = run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"]) ?? ""
        return (revision, !status.isEmpty)
    }

    /// The version of the compiler that built this binary.
    static var compilerVersion: String {
        #if compiler(>=6.5)
        return ">=6.5"
        #elseif compiler(>=6.4)
        return "6.4"
        #elseif compiler(>=6.3)
        return "6.3"
        #elseif compiler(>=6.2)
        return "6.2"
        #elseif compiler(>=6.1)
        return "6.1"
        #else
        return "6.0"
        #endif
    }

    static var buildConfiguration: String {
        #if DEBUG
        return "debug"
        #else
        return "release"
        #endif
    }

    private static func value(of key: String, in text: String, separator: Character) -> String? {
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: separator, maxSplits: 1)
            if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == key {
                return parts[1].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }

    /// Runs a short command through `env` and returns its trimmed stdout, or nil if it failed.
    static func run(_ arguments: [String]) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
