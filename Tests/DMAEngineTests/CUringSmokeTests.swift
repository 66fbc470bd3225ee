import CUring
import Glibc
import Testing

/// The C bridge imports beside Glibc and reaches the kernel's io_uring.
@Suite struct CUringSmokeTests {
    @Test func ringInitAndNopRoundTrip() throws {
        var ring = io_uring()
        let rc = io_uring_queue_init(8, &ring, 0)
        try #require(rc == 0, "io_uring_queue_init failed: \(rc)")
        defer { io_uring_queue_exit(&ring) }
        let sqe = try #require(io_uring_get_sqe(&ring))
        io_uring_prep_nop(sqe)
        io_uring_sqe_set_data64(sqe, 42)
        #expect(io_uring_submit(&ring) == 1)
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        #expect(io_uring_wait_cqe(&ring, &cqe) == 0)
        let done = try #require(cqe)
        #expect(done.pointee.user_data == 42)
        #expect(done.pointee.res == 0)
        io_uring_cqe_seen(&ring, done)
    }

    @Test func memfdCanBeSizedAndMapped() throws {
        let fd = cu_memfd_create("smoke", cu_mfd_cloexec())
        try #require(fd >= 0)
        defer { close(fd) }
        #expect(ftruncate(fd, 1 << 20) == 0)
        #expect(cu_iov_max() >= 1024)
    }
}
