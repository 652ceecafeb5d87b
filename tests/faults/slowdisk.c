/* A slow disk for one path: fsync and its relatives sleep first.
 *
 * Loaded with LD_PRELOAD into a storage node (and so into every git it runs).
 * Before each fsync, fdatasync, sync_file_range or syncfs the file named by
 * GITQUORUM_SLOW_DISK is read; each of its lines is "<milliseconds> <path
 * prefix>". A call on a file whose path starts with a listed prefix sleeps
 * that long, then does the real call. No file, or no matching line: no delay.
 * The file is read at every call, so the delay is switched on and off while
 * the processes run.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long delay_for(int fd) {
    const char *control = getenv("GITQUORUM_SLOW_DISK");
    if (control == NULL || *control == '\0') return 0;
    FILE *file = fopen(control, "re");
    if (file == NULL) return 0;
    char link[64];
    char target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) {
        fclose(file);
        return 0;
    }
    target[n] = '\0';
    char line[4200];
    long delay = 0;
    while (fgets(line, sizeof line, file) != NULL) {
        char *rest;
        long ms = strtol(line, &rest, 10);
        if (rest == line || *rest != ' ') continue;
        rest++;
        rest[strcspn(rest, "\n")] = '\0';
        if (*rest != '\0' && strncmp(target, rest, strlen(rest)) == 0) {
            delay = ms;
            break;
        }
    }
    fclose(file);
    return delay;
}

static void maybe_sleep(int fd) {
    int saved = errno;
    long ms = delay_for(fd);
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    maybe_sleep(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    maybe_sleep(fd);
    return real(fd);
}

int syncfs(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    maybe_sleep(fd);
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (real == NULL) real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    maybe_sleep(fd);
    return real(fd, offset, nbytes, flags);
}
