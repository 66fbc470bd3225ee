import Testing
@testable import dmem_bench

@Suite struct ByteCountTests {
    @Test(arguments: [
        ("4096", 4096), ("0", 0), ("4K", 4096), ("4k", 4096), ("4KB", 4096), ("4KiB", 4096), ("4Ki", 4096),
        ("64K", 65536), ("2M", 2 << 20), ("256MiB", 256 << 20), ("1G", 1 << 30), ("1T", 1 << 40),
        (" 4K ", 4096), ("512B", 512), ("007", 7),
    ])
    func parsesDecimalWithBinarySuffix(text: String, bytes: Int) {
        #expect(ByteCount(parsing: text)?.bytes == bytes)
    }

    @Test(arguments: ["", "K", "4X", "-4K", "4.5K", "4KK", "4 K", "0x10", "4Kb5", "99999999999T", "9223372036854775808"])
    func rejectsMalformedOrOverflowing(text: String) {
        #expect(ByteCount(parsing: text) == nil)
    }

    @Test func describesWithTheLargestExactSuffix() {
        #expect(ByteCount(4096).description == "4K")
        #expect(ByteCount(2 << 20).description == "2M")
        #expect(ByteCount(1 << 30).description == "1G")
        #expect(ByteCount(4097).description == "4097")
        #expect(ByteCount(0).description == "0")
        #expect(ByteCount(3 << 10).description == "3K")
    }

    @Test func descriptionParsesBack() {
        for bytes in [1, 4096, 65536, 3 << 20, 5 << 30, 12345] {
            #expect(ByteCount(parsing: ByteCount(bytes).description)?.bytes == bytes)
        }
    }

    /// A size flag that does not parse says why (it used to be only "The value '-8M' is invalid").
    @Test func badSizeFlagsSayWhy() {
        #expect(parseError(["copy", "--total=-8M"])
                == "The value '-8M' is invalid for '--total <total>': a size cannot be negative")
        #expect(parseError(["migrate", "--total", "99999999999T"])
                == "The value '99999999999T' is invalid for '--total <total>': too large (a size must be below 8 EiB)")
        #expect(parseError(["torture", "--vram", "4Q"])
                == "The value '4Q' is invalid for '--vram <vram>': expected a size such as 4096, 4K, 2M or 1G (K/M/G/T are binary)")
        #expect(parseError(["run", "copy", "--set", "total=-8M"])
                == "'-8M' is not a valid value for 'total': a size cannot be negative")
        #expect(parseError(["copy", "--total", "8M", "--page-size", "64K", "--host-memory", "32M"]) == nil)
    }
}
