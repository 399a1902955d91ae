#ifndef AMBIT_UNIX_PACKET_H
#define AMBIT_UNIX_PACKET_H

#include <stddef.h>
#include <sys/types.h>

/// Unix SOCK_SEQPACKET sockets with descriptor passing (SCM_RIGHTS), for istio-cni's ZDS
/// protocol: one message per packet, a pod's network namespace riding with it. Each call
/// returns -1 and sets errno on failure, like the call it wraps.

/// A SOCK_SEQPACKET socket (close-on-exec, blocking) connected to the socket at `path`.
int ambit_seqpacket_connect(const char *path);

/// A SOCK_SEQPACKET socket (close-on-exec, blocking) bound to `path` and listening; an
/// existing file at `path` is removed first.
int ambit_seqpacket_listen(const char *path, int backlog);

/// Receives one packet into `buffer` (`capacity` bytes) and up to `max_fds` descriptors
/// (close-on-exec) into `fds`; `*fd_count` is how many arrived. `*flags` gets 1 when the
/// packet was truncated (MSG_TRUNC), 2 when descriptors were (MSG_CTRUNC, or more than
/// `max_fds` arrived: the extra ones are closed), 3 for both. Returns the packet's length
/// (0 at end of stream).
ssize_t ambit_seqpacket_receive(int fd, void *buffer, size_t capacity, int *fds, int max_fds, int *fd_count, int *flags);

/// Sends one packet, with the descriptors `fds[0..<fd_count]` attached when `fd_count` > 0.
ssize_t ambit_seqpacket_send(int fd, const void *buffer, size_t length, const int *fds, int fd_count);

/// The kind of namespace `fd` refers to (ioctl NS_GET_NSTYPE: CLONE_NEWNET for a network
/// namespace), or -1 (errno ENOTTY on kernels without the call).
int ambit_namespace_type(int fd);

/// CLONE_NEWNET, for comparing with ambit_namespace_type.
int ambit_clone_newnet(void);

#endif
