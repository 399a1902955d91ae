#define _GNU_SOURCE
#include "ambit_system.h"

#ifdef __linux__
#include <sched.h>
#include <sys/vfs.h>

int ambit_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

long ambit_fs_magic(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return (long)info.f_type;
}
#else
#include <errno.h>
int ambit_setns_net(int fd) { (void)fd; errno = ENOSYS; return -1; }
long ambit_fs_magic(int fd) { (void)fd; errno = ENOSYS; return -1; }
#endif
