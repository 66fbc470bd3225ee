import Foundation
import ArgumentParser

/// A size given on the command line: `4096`, `4K`, `64KiB`, `256M`, `2G` (binary multiples).
struct ByteCount: Equatable, Sendable, CustomStringConvertible {
    var bytes: Int

    init(_ bytes: Int) { self.bytes = bytes }

    /// Parses a decimal count with an optional K/M/G/T suffix (optionally followed by `i`, `B`, or `iB`).
    init?(parsing text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var digits = Substring(trimmed)
        var unitPart = ""
        while let last = digits.last, !last.isNumber {
            unitPart.insert(last, at: unitPart.startIndex)
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let value = Int(digits) else { return nil }
        let shift: Int
        switch unitPart.uppercased() {
        case "", "B": shift = 0
        case "K", "KB", "KI", "KIB": shift = 10
        case "M", "MB", "MI", "MIB": shift = 20
        case "G", "GB", "GI", "GIB": shift = 30
        case "T", "TB", "TI", "TIB": shift = 40
        default: return nil
        }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { return nil }
        self.bytes = result
    }

    /// The shortest exact binary-suffixed spelling: 4096 → "4K", 268435456 → "256M".
    var description: String {
        for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] where bytes != 0 && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}

extension ByteCount: ExpressibleByArgument {
    init?(argument: String) { self.init(parsing: argument) }
}
