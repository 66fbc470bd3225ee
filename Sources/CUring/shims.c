// Thin wrappers for libc calls that Swift's Glibc module does not expose.
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <unistd.h>
#include "CUring.h"

int cu_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int cu_fallocate(int fd, int mode, off_t offset, off_t len) { return fallocate(fd, mode, offset, len); }

unsigned int cu_mfd_cloexec(void) { return MFD_CLOEXEC; }

int cu_iov_max(void) { return IOV_MAX; }

int cu_open_tmpfile(const char *directory, int mode) { return open(directory, O_TMPFILE | O_RDWR | O_CLOEXEC, mode); }

int cu_madv_hugepage(void) { return MADV_HUGEPAGE; }

int cu_madv_populate_write(void) { return MADV_POPULATE_WRITE; }

// The vectored fixed-buffer opcodes came with Linux 6.15; older uapi headers lack them.
#ifndef IORING_OP_READV_FIXED_VALUE
#define IORING_OP_READV_FIXED_VALUE 60
#define IORING_OP_WRITEV_FIXED_VALUE 61
#endif

unsigned char cu_op_readv_fixed(void) { return IORING_OP_READV_FIXED_VALUE; }

unsigned char cu_op_writev_fixed(void) { return IORING_OP_WRITEV_FIXED_VALUE; }

void cu_prep_rw_fixed(struct io_uring_sqe *sqe, unsigned char op, int fd, const void *addr, unsigned len,
                      unsigned long long offset, unsigned short buf_index) {
    io_uring_prep_rw(op, sqe, fd, addr, len, offset);
    sqe->buf_index = buf_index;
}
