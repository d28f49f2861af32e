/*
 * runtime-probe: stands in for the OCI runtime and records how much CPU the
 * process had used when it was exec'd, then execs the real runtime.
 *
 * A monitor forks a child that prepares the runtime's fds and environment and
 * then execs the runtime; that work is the monitor's, but it is accounted to
 * the child, which becomes the runtime.  CPU time survives exec, so the first
 * thing an exec'd program reads from CLOCK_THREAD_CPUTIME_ID (which brings
 * the running task's figure up to date; /proc/thread-self/schedstat can lag
 * by a tick) is that work plus the exec itself.  Static, so the exec costs
 * the same for both monitors and little.
 *
 * Writes "<cpu ns> <utime+stime ticks>\n" to <bundle>/runtime-probe
 * (the bundle is the argument of --bundle or -b), then execv(REAL_RUNTIME).
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef REAL_RUNTIME
#error "compile with -DREAL_RUNTIME=\"/usr/bin/runc\""
#endif

static long long thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return -1;
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long stat_ticks(void)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

int main(int argc, char **argv)
{
    long long ns = thread_cpu_ns();
    long long ticks = stat_ticks();
    const char *bundle = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--bundle") || !strcmp(argv[i], "-b")) && i + 1 < argc)
            bundle = argv[i + 1];
        else if (!strncmp(argv[i], "--bundle=", 9))
            bundle = argv[i] + 9;
    }
    if (bundle) {
        char path[4096];
        snprintf(path, sizeof path, "%s/runtime-probe", bundle);
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            char line[64];
            int len = snprintf(line, sizeof line, "%lld %lld\n", ns, ticks);
            if (write(fd, line, len) != len)
                perror("runtime-probe: write");
            close(fd);
        }
    }
    argv[0] = REAL_RUNTIME;
    execv(REAL_RUNTIME, argv);
    perror("runtime-probe: exec " REAL_RUNTIME);
    return 127;
}
