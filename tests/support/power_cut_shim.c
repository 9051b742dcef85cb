/* An LD_PRELOAD shim that makes a later "power cut" possible (tests/test_power_cut.py).
 *
 * For every file under $POWER_CUT_DIR, before each write that is not synced at once
 * (an O_SYNC/O_DSYNC descriptor's is), it appends an undo record to $POWER_CUT_LOG:
 * the file, the write's offset, the file's size before it, and the bytes the write
 * overwrites. An fsync/fdatasync of a file appends a marker that discards that file's
 * records written before the sync *began* (a write racing the sync is not counted as
 * synced). ftruncate is recorded the same way (old size, bytes cut off).
 *
 * The power cut is then: SIGKILL the process (the page cache, the data files and
 * the log all survive it, so the log is complete) and apply the records left, newest
 * first (tests/support/power_cut.py): what remains is exactly what was synced.
 *
 * Intercepted: write, pwrite, pwrite64, writev, pwritev, pwritev64, fsync, fdatasync,
 * ftruncate, ftruncate64. LMDB (no MDB_WRITEMAP) writes pages with pwrite (one) or
 * lseek+writev (several) and its meta page with pwrite; Python's os.pwrite is pwrite64.
 * A descriptor's file and flags are read from /proc/self/fd and fcntl(F_GETFL) at each
 * call, so no open() needs intercepting and reused descriptors are never confused.
 * Not modelled: writes through a shared mmap (LMDB's data file is mapped read-only
 * without MDB_WRITEMAP), directory entries (files are created and renamed before
 * the test's cut matters), reordering or tearing within what one sync covers.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char watched[PATH_MAX];
static size_t watched_len;
static int log_fd = -1;
static uint64_t serial; /* records written so far */

__attribute__((constructor)) static void init(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_pwritev = dlsym(RTLD_NEXT, "pwritev");
    real_pwritev64 = dlsym(RTLD_NEXT, "pwritev64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    const char *dir = getenv("POWER_CUT_DIR");
    const char *log = getenv("POWER_CUT_LOG");
    if (!dir || !log) return;
    if (!realpath(dir, watched)) { strncpy(watched, dir, PATH_MAX - 2); }
    watched_len = strlen(watched);
    watched[watched_len++] = '/';
    watched[watched_len] = 0;
    log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) abort(); /* a shim that cannot log must not pretend to work */
}

/* The watched file behind fd (into path), or 0 when it is not one to record. */
static int watched_path(int fd, char *path) {
    if (log_fd < 0 || fd == log_fd) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, PATH_MAX - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    return strncmp(path, watched, watched_len) == 0;
}

static void log_all(const void *data, size_t len) {
    const char *p = data;
    while (len) {
        ssize_t n = real_write(log_fd, p, len);
        if (n < 0) { if (errno == EINTR) continue; abort(); }
        p += n; len -= (size_t)n;
    }
}

/* Record kind 'U' (undo): path, offset, old size, old bytes of [offset, offset+len). */
static void record_undo(const char *path, off_t offset, size_t len) {
    struct stat st;
    int rfd = open(path, O_RDONLY | O_CLOEXEC);
    if (rfd < 0 || fstat(rfd, &st) != 0) abort();
    int64_t old_size = st.st_size;
    int64_t have = 0;
    if (offset < old_size) have = (old_size - offset) < (int64_t)len ? old_size - offset : (int64_t)len;
    char *old = malloc(have ? (size_t)have : 1);
    if (!old) abort();
    int64_t got = 0;
    while (got < have) {
        ssize_t n = pread(rfd, old + got, (size_t)(have - got), offset + got);
        if (n <= 0) abort();
        got += n;
    }
    close(rfd);
    uint32_t path_len = (uint32_t)strlen(path);
    int64_t off = offset;
    log_all("U", 1);
    log_all(&path_len, 4);
    log_all(path, path_len);
    log_all(&off, 8);
    log_all(&old_size, 8);
    log_all(&have, 8);
    log_all(old, (size_t)have);
    free(old);
    serial++;
}

/* Record kind 'S' (synced): path, and the serial number at the sync's start. */
static void record_sync(const char *path, uint64_t upto) {
    uint32_t path_len = (uint32_t)strlen(path);
    log_all("S", 1);
    log_all(&path_len, 4);
    log_all(path, path_len);
    log_all(&upto, 8);
}

static int synced_at_once(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags >= 0 && (flags & (O_SYNC | O_DSYNC));
}

static off_t write_offset(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_APPEND)) {
        struct stat st;
        fstat(fd, &st);
        return st.st_size;
    }
    return lseek(fd, 0, SEEK_CUR);
}

static size_t iov_len(const struct iovec *iov, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    return total;
}

#define BEFORE_WRITE(fd, offset, len)                                   \
    char path[PATH_MAX];                                                \
    int hold = watched_path(fd, path);                                  \
    if (hold) {                                                         \
        pthread_mutex_lock(&lock);                                      \
        if (!synced_at_once(fd)) record_undo(path, (offset), (len));    \
    }
#define AFTER_WRITE()                                                   \
    if (hold) {                                                         \
        int saved = errno;                                              \
        pthread_mutex_unlock(&lock);                                    \
        errno = saved;                                                  \
    }

ssize_t write(int fd, const void *buf, size_t count) {
    BEFORE_WRITE(fd, write_offset(fd), count);
    ssize_t r = real_write(fd, buf, count);
    AFTER_WRITE();
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    BEFORE_WRITE(fd, offset, count);
    ssize_t r = real_pwrite(fd, buf, count, offset);
    AFTER_WRITE();
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    BEFORE_WRITE(fd, offset, count);
    ssize_t r = real_pwrite64(fd, buf, count, offset);
    AFTER_WRITE();
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    BEFORE_WRITE(fd, write_offset(fd), iov_len(iov, iovcnt));
    ssize_t r = real_writev(fd, iov, iovcnt);
    AFTER_WRITE();
    return r;
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    BEFORE_WRITE(fd, offset, iov_len(iov, iovcnt));
    ssize_t r = real_pwritev(fd, iov, iovcnt, offset);
    AFTER_WRITE();
    return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    BEFORE_WRITE(fd, offset, iov_len(iov, iovcnt));
    ssize_t r = real_pwritev64(fd, iov, iovcnt, offset);
    AFTER_WRITE();
    return r;
}

static int do_sync(int fd, int (*real)(int)) {
    char path[PATH_MAX];
    if (!watched_path(fd, path)) return real(fd);
    pthread_mutex_lock(&lock);
    uint64_t upto = serial;
    pthread_mutex_unlock(&lock);
    int r = real(fd);
    if (r == 0) {
        pthread_mutex_lock(&lock);
        record_sync(path, upto);
        pthread_mutex_unlock(&lock);
    }
    return r;
}

int fsync(int fd) { return do_sync(fd, real_fsync); }
int fdatasync(int fd) { return do_sync(fd, real_fdatasync); }

static int do_truncate(int fd, off_t length, int (*real)(int, off_t)) {
    char path[PATH_MAX];
    if (!watched_path(fd, path)) return real(fd, length);
    pthread_mutex_lock(&lock);
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > length) {
        record_undo(path, length, (size_t)(st.st_size - length)); /* the bytes cut off */
    } else {
        record_undo(path, length, 0); /* growing: undo shrinks back to the old size */
    }
    int r = real(fd, length);
    int saved = errno;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}

int ftruncate(int fd, off_t length) { return do_truncate(fd, length, real_ftruncate); }
int ftruncate64(int fd, off_t length) { return do_truncate(fd, length, real_ftruncate64); }
