// CUring: C glue for dmem-emu's copy engine. No logic beyond glue.
//
// <sys/select.h> and <sys/socket.h> must come before <liburing.h>: otherwise
// Swift's Glibc module and this one disagree on fd_set ("'__fds_bits' ... not
// present in definition of 'fd_set' in module 'CUring'").
#ifndef DMEM_CURING_H
#define DMEM_CURING_H

#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <stddef.h>
#include <stdint.h>
// swift-system's CSystem module includes the kernel's <linux/io_uring.h>;
// liburing ships an older copy under the same include guard. Including the
// kernel's first makes both modules see one definition of struct io_uring_sqe
// (otherwise: "'rw_flags' from module 'CSystem' is not present in definition
// ... in module 'CUring'" in any file that imports both).
#include <linux/io_uring.h>
#include <liburing.h>

/// memfd_create(2); Glibc's Swift overlay does not export it.
int cu_memfd_create(const char *name, unsigned int flags);

/// fallocate(2); hidden behind _GNU_SOURCE in glibc.
int cu_fallocate(int fd, int mode, off_t offset, off_t len);

/// The MFD_CLOEXEC flag value for cu_memfd_create.
unsigned int cu_mfd_cloexec(void);

/// IOV_MAX as the C library defines it.
int cu_iov_max(void);

/// open(directory, O_TMPFILE | O_RDWR | O_CLOEXEC, mode): an unnamed file in
/// `directory` that disappears with its last descriptor; O_TMPFILE needs _GNU_SOURCE.
int cu_open_tmpfile(const char *directory, int mode);

/// IORING_OP_READV_FIXED / IORING_OP_WRITEV_FIXED (Linux 6.15; liburing 2.3's header predates them).
unsigned char cu_op_readv_fixed(void);
unsigned char cu_op_writev_fixed(void);

/// io_uring_prep_rw(op, ...) plus the fixed-buffer index (sqe->buf_index sits in a union).
void cu_prep_rw_fixed(struct io_uring_sqe *sqe, unsigned char op, int fd, const void *addr, unsigned len,
                      unsigned long long offset, unsigned short buf_index);

/// The MADV_HUGEPAGE advice value.
int cu_madv_hugepage(void);

/// The MADV_POPULATE_WRITE advice value (Linux 5.14).
int cu_madv_populate_write(void);

#endif
