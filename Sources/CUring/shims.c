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
