/* pinns: pins a pod's namespaces for CRI-O (our own small version, written
 * from the interface CRI-O calls in internal/config/nsmgr/nsmgr_linux.go).
 *
 *   pinns -d DIR -f NAME [-s KEY=VALUE]... [--ipc[=host]] [--uts[=host]]
 *         [--net[=host]] [--user[=host]] [--uid-mapping=..] [--gid-mapping=..]
 *
 * For each namespace flag, DIR/<type>ns/NAME becomes a bind mount of a
 * namespace: a new one, or the host's for "=host".  CRI-O opens those paths
 * as nsfs files (a plain file is refused).  A forked child unshares the new
 * namespaces and writes the sysctls inside them; the parent bind-mounts
 * /proc/<child>/ns/<type> onto each path, then lets the child go.  New user
 * namespaces (id mappings) are refused with a clear error.  Exit 0 on
 * success; otherwise the reason on stderr and exit 1 (CRI-O unmounts). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { NS_IPC, NS_UTS, NS_NET, NS_USER, NS_COUNT };

static const char *const ns_names[NS_COUNT] = { "ipc", "uts", "net", "user" };
static const int ns_flags[NS_COUNT] = { CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWNET, CLONE_NEWUSER };

/* 0 = not asked, 1 = new namespace, 2 = the host's */
static int wanted[NS_COUNT];
static char **sysctls;
static int n_sysctls;

static void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("pinns: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);

    if (len >= sizeof buf)
        return -1;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* KEY=VALUE -> /proc/sys/KEY/with/slashes, written from inside the namespaces. */
static void write_sysctl(const char *kv)
{
    char path[4096];
    const char *eq = strchr(kv, '=');
    int n, fd;

    if (!eq || eq == kv)
        die("invalid sysctl %s (want KEY=VALUE)", kv);
    n = snprintf(path, sizeof path, "/proc/sys/%.*s", (int)(eq - kv), kv);
    if (n < 0 || (size_t)n >= sizeof path)
        die("sysctl name too long: %s", kv);
    for (char *p = path + strlen("/proc/sys/"); *p; p++)
        if (*p == '.')
            *p = '/';
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        die("sysctl %s: open %s: %s", kv, path, strerror(errno));
    if (write(fd, eq + 1, strlen(eq + 1)) < 0)
        die("sysctl %s: write: %s", kv, strerror(errno));
    close(fd);
}

static void __attribute__((noreturn)) usage(void)
{
    die("usage: pinns -d DIR -f NAME [-s KEY=VALUE]... [--ipc[=host]] [--uts[=host]] [--net[=host]] [--user[=host]]");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "dir", required_argument, NULL, 'd' },
        { "filename", required_argument, NULL, 'f' },
        { "sysctl", required_argument, NULL, 's' },
        { "ipc", optional_argument, NULL, 'i' },
        { "uts", optional_argument, NULL, 'u' },
        { "net", optional_argument, NULL, 'n' },
        { "user", optional_argument, NULL, 'U' },
        { "uid-mapping", required_argument, NULL, 'm' },
        { "gid-mapping", required_argument, NULL, 'g' },
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL, *name = NULL;
    int to_child[2], to_parent[2], unshare_flags = 0, opt, status;
    char ok;
    pid_t child;

    sysctls = calloc((size_t)argc, sizeof *sysctls);
    if (!sysctls)
        die("out of memory");
    while ((opt = getopt_long(argc, argv, "d:f:s:", longopts, NULL)) != -1) {
        int ns = -1;

        switch (opt) {
        case 'd': dir = optarg; break;
        case 'f': name = optarg; break;
        case 's': sysctls[n_sysctls++] = optarg; break;
        case 'i': ns = NS_IPC; break;
        case 'u': ns = NS_UTS; break;
        case 'n': ns = NS_NET; break;
        case 'U': ns = NS_USER; break;
        case 'm':
        case 'g':
            die("user namespace id mappings are not supported by this pinns");
        default:
            usage();
        }
        if (ns >= 0) {
            if (optarg && strcmp(optarg, "host") != 0)
                die("--%s takes no value but \"host\" (got %s)", ns_names[ns], optarg);
            wanted[ns] = optarg ? 2 : 1;
        }
    }
    if (!dir || !name || optind != argc)
        usage();
    if (strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        die("invalid file name %s", name);
    if (wanted[NS_USER] == 1)
        die("new user namespaces are not supported by this pinns");
    for (int i = 0; i < NS_COUNT; i++)
        if (wanted[i] == 1)
            unshare_flags |= ns_flags[i];

    if (pipe2(to_child, O_CLOEXEC) < 0 || pipe2(to_parent, O_CLOEXEC) < 0)
        die("pipe: %s", strerror(errno));
    child = fork();
    if (child < 0)
        die("fork: %s", strerror(errno));
    if (child == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        if (unshare_flags && unshare(unshare_flags) < 0)
            die("unshare: %s", strerror(errno));
        for (int i = 0; i < n_sysctls; i++)
            write_sysctl(sysctls[i]);
        ok = 1;
        if (write(to_parent[1], &ok, 1) != 1)
            _exit(1);
        /* Keep the namespaces alive until the parent has mounted them. */
        if (read(to_child[0], &ok, 1) < 0)
            _exit(1);
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    if (read(to_parent[0], &ok, 1) != 1) {
        waitpid(child, NULL, 0);
        die("the namespace child failed (see above)");
    }

    for (int i = 0; i < NS_COUNT; i++) {
        char nsdir[4096], target[4096], source[64];
        int fd;

        if (!wanted[i])
            continue;
        if (snprintf(nsdir, sizeof nsdir, "%s/%sns", dir, ns_names[i]) >= (int)sizeof nsdir ||
            snprintf(target, sizeof target, "%s/%s", nsdir, name) >= (int)sizeof target)
            die("path too long");
        if (mkdir_p(nsdir) < 0)
            die("mkdir %s: %s", nsdir, strerror(errno));
        fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            die("create %s: %s", target, strerror(errno));
        close(fd);
        if (wanted[i] == 2)
            snprintf(source, sizeof source, "/proc/self/ns/%s", ns_names[i]);
        else
            snprintf(source, sizeof source, "/proc/%d/ns/%s", (int)child, ns_names[i]);
        if (mount(source, target, NULL, MS_BIND, NULL) < 0) {
            kill(child, SIGKILL);
            die("bind mount %s on %s: %s", source, target, strerror(errno));
        }
    }
    close(to_child[1]);
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("the namespace child did not exit cleanly");
    return 0;
}
