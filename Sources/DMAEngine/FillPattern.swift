import Glibc
import NIOConcurrencyHelpers

/// Read-only buffers of one repeated byte, the memory side of a fill written through a file.
///
/// A fill of a VRAM range becomes a `pwritev` whose iovecs all point into the
/// buffer for its value. Buffers are created on first use and live for the
/// process (at most 256 × `chunk`; zero needs no pages: it maps untouched
/// anonymous memory, which reads as the zero page).
///
/// Threads: any.
enum FillPattern {
    /// Bytes per pattern buffer: IOV_MAX × chunk ≥ `DMAChannel.maxDescriptorLength`.
    static let chunk = 1 << 20

    private static let table = NIOLockedValueBox<[Int: UInt]>([:])

    /// The pattern buffer for `value`, or nil if it could not be mapped (the caller then fills with the CPU).
    static func buffer(for value: UInt8) -> UnsafeRawPointer? {
        table.withLockedValue { buffers in
            if let b = buffers[Int(value)] { return UnsafeRawPointer(bitPattern: b) }
            guard let p = mmap(nil, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
                return nil
            }
            if value != 0 { memset(p, Int32(value), chunk) }
            buffers[Int(value)] = UInt(bitPattern: p)
            return UnsafeRawPointer(p)
        }
    }
}
