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
        guard let shift = Self.suffixShifts[unitPart.uppercased()] else { return nil }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { return nil }
        self.bytes = result
    }

    /// The accepted suffixes (upper-cased) and their binary shifts.
    static let suffixShifts: [String: Int] = [
        "": 0, "B": 0,
        "K": 10, "KB": 10, "KI": 10, "KIB": 10,
        "M": 20, "MB": 20, "MI": 20, "MIB": 20,
        "G": 30, "GB": 30, "GI": 30, "GIB": 30,
        "T": 40, "TB": 40, "TI": 40, "TIB": 40,
    ]

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

    /// Parses a command-line size or says why it is not one; the transform of every size
    /// flag, so that `--total=-8M` reads "The value '-8M' is invalid for '--total <total>':
    /// a size cannot be negative" instead of giving no reason.
    /// Size flags parse `.unconditional` (see `NumberArgument`): a flag where the size should
    /// be (`--total --json`) is a missing value, not a negative size.
    static func argument(_ text: String) throws(ByteCountError) -> ByteCount {
        if NumberArgument.looksLikeFlag(text) { throw ByteCountError(NumberArgument.flagInsteadOfValue) }
        guard let size = ByteCount(parsing: text) else { throw ByteCountError(Self.reason(rejecting: text)) }
        return size
    }

    /// Why `text` is not a size (`ByteCount(parsing:)` returned nil).
    static func reason(rejecting text: String) -> String {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("-") { return "a size cannot be negative" }
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        let suffix = trimmed.dropFirst(digits.count).uppercased()
        if !digits.isEmpty, Self.suffixShifts[suffix] != nil {
            return "too large (a size must be below 8 EiB)"   // well-formed, so it overflowed
        }
        return "expected a size such as 4096, 4K, 2M or 1G (K/M/G/T are binary)"
    }
}

/// A command-line size that does not parse; the description is the reason.
struct ByteCountError: Error, Equatable, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
