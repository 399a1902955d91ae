#ifndef AMBIT_SYSTEM_H
#define AMBIT_SYSTEM_H

#include "ambit_unix_packet.h"

/// Linux calls the Swift Glibc module does not export (they need _GNU_SOURCE or headers
/// it leaves out). Each returns -1 and sets errno on failure, like the call it wraps.

/// setns(fd, CLONE_NEWNET): moves the calling thread into the network namespace `fd`.
int ambit_setns_net(int fd);

/// The file system magic number of `fd` (fstatfs f_type), or -1.
long ambit_fs_magic(int fd);

/// bind(2) / connect(2) to an IPv4 (`length` 4) or IPv6 (`length` 16) address in network
/// byte order and a port in host byte order.
int ambit_bind_ip(int fd, const unsigned char *address, int length, unsigned short port);
int ambit_connect_ip(int fd, const unsigned char *address, int length, unsigned short port);

/// Returns freed heap memory to the system (glibc's malloc_trim(0)); 1 when some was
/// released, 0 when none was or the C library has no such call.
int ambit_malloc_trim(void);

/// Bytes of heap the program holds (glibc's mallinfo2: in-use chunks plus mmapped
/// blocks), free chunks not counted; -1 where the C library cannot say.
long long ambit_heap_in_use(void);

#endif
