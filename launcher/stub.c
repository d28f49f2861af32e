/*
 * conmon (stub): the per-container process of pyconmon's server mode.
 *
 * Podman and CRI-O exec this as `conmon`.  It is linked statically (no
 * libpython, no ld.so relocations: ~50 KB private memory) and does only
 * what must happen in the caller's own process, the way C conmon does it:
 * start pipe, double fork (none with --sync), pid file, setsid, child subreaper, signal
 * forwarding, forking the runtime and the exit command (so they run in the
 * caller's cgroups, namespaces and environment), reaping.  Everything else
 * (options, logs, attach socket, ctl FIFOs, OOM, exit files) is done by one
 * long-lived Python server per build key (src/pyconmon/server.py), which
 * gets argv, environment and descriptors over a unix socket (SCM_RIGHTS).
 * Wire format: src/pyconmon/protocol.py.  The socket: /run/pyconmon/KEY.sock for real root;
 * $XDG_RUNTIME_DIR/pyconmon/KEY-USERNS-MNTNS.sock for anyone else, rootless Podman included
 * (uid 0 of the user's namespace).
 *
 * Server mode is the default.  Classic mode (exec of the classic launcher,
 * PYCONMON_CLASSIC) is the switch-off and the fallback: the mode is classic
 * when PYCONMON_MODE=classic is in the environment or the first word of
 * PYCONMON_MODE_FILE is "classic" (or a word it does not know); "always" is
 * server mode also in a systemd service.  Even in server mode anything the server cannot serve exactly (passthrough,
 * journald without the server's CAP_SYS_ADMIN, a systemd *.service cgroup, no server, a refusal) execs the
 * classic monitor before the start byte is read.  Should the server go away
 * after the start byte but before the runtime runs, the classic monitor is
 * exec'd with _PYCONMON_RESUMED=1: it then neither reads the start byte nor
 * forks again (ZYGOTE.md R2).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "version.h"

#ifndef PYCONMON_CLASSIC
#error "compile with -DPYCONMON_CLASSIC=\"$(PYCONMON_LIBDIR)/classic/conmon\""
#endif
#ifndef PYCONMON_KEY
#define PYCONMON_KEY "dev"
#endif
#ifndef PYCONMON_MODE_FILE
#define PYCONMON_MODE_FILE "/etc/pyconmon/mode"
#endif

#define MAX_PACKET (1 << 20)
#define MAX_FDS 8
#define MAX_INHERITED 256
#define HELLO_TIMEOUT_MS 10000

extern char **environ;

static char **g_argv;
static int g_sock = -1;
static int g_sync_fd = -1, g_attach_fd = -1, g_start_fd = -1;
static int g_inherited[MAX_INHERITED];
static int g_n_inherited;
static pid_t g_runtime_pid, g_target_pid;
static int g_pidfd = -1;
/* Our copies of the container's descriptors, for a takeover (src/pyconmon/takeover.py: KEPT,
 * the same names in the same order). */
static const char *const KEPT[] = {"in", "out", "err", "pty", "attach", "ctl", "ctlw", "winsz", "winszw"};
#define N_KEPT (int)(sizeof KEPT / sizeof KEPT[0])
static int g_kept[N_KEPT] = {-1, -1, -1, -1, -1, -1, -1, -1, -1};
static int g_runtime_reaped, g_runtime_status, g_target_status;
static int g_held_signal; /* came after the runtime's end, before 'W' named the container */
static char g_old_oom[32];
static char *g_packet;

static int write_all(int fd, const char *buf, size_t len);

static void set_oom(const char *value)
{
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        write_all(fd, value, strlen(value));
        close(fd);
    }
}

/* ---------------------------------------------------------------- classic */

static void keep_across_exec(int fd)
{
    int fl = fd >= 0 ? fcntl(fd, F_GETFD) : -1;
    if (fl >= 0)
        fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
}

static void exec_classic(int resumed)
{
    if (g_sock >= 0)
        close(g_sock);
    if (resumed) {
        /* Everything the caller gave us goes on to the classic monitor. */
        keep_across_exec(g_sync_fd);
        keep_across_exec(g_attach_fd);
        keep_across_exec(g_start_fd);
        for (int i = 0; i < g_n_inherited; i++)
            keep_across_exec(g_inherited[i]);
        if (g_old_oom[0])
            set_oom(g_old_oom); /* classic saves it again, for the runtime and the exit command */
        setenv("_PYCONMON_RESUMED", "1", 1);
    }
    /* The signal mask and ignored signals survive exec: hand over a clean state. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    execv(PYCONMON_CLASSIC, g_argv);
    fprintf(stderr, "[conmon:e]: Failed to exec %s: %s\n", PYCONMON_CLASSIC, strerror(errno));
    _exit(1);
}

/* ------------------------------------------------------------------ utils */

static int env_fd(const char *name)
{
    const char *v = getenv(name);
    char *end;
    long fd;
    if (!v || !*v)
        return -1;
    errno = 0;
    fd = strtol(v, &end, 10);
    if (errno || *end || fd < 0 || fd > 1 << 20)
        return -2;
    return (int)fd;
}

static int has_arg(int argc, char **argv, const char *word)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], word) == 0)
            return 1;
    return 0;
}

/* Log drivers the server does not serve (passthrough: the caller's stdio would
 * have to be handed on).  journald is the server's call: it serves it when it
 * may send entries as this process (src/pyconmon/served_journald.py). */
static int unserved_log_driver(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        if ((strcmp(argv[i], "-l") == 0 || strcmp(argv[i], "--log-path") == 0) && i + 1 < argc)
            v = argv[i + 1];
        else if (strncmp(argv[i], "--log-path=", 11) == 0)
            v = argv[i] + 11;
        else if (strncmp(argv[i], "-l", 2) == 0 && argv[i][2])
            v = argv[i] + 2;
        if (v && strncmp(v, "passthrough", 11) == 0)
            return 1;
    }
    return 0;
}

enum mode { CLASSIC, SERVER, ALWAYS };

/* PYCONMON_MODE, else the first word of the mode file: "server", or nothing (no file,
 * an empty one): server mode where it applies; "always": also in a systemd service
 * (for tests, and units that don't need the monitor as their main process);
 * "classic" or any other word: classic. */
static enum mode mode_wanted(void)
{
    const char *v = getenv("PYCONMON_MODE");
    char buf[64] = {0};
    int fd;
    ssize_t n;
    if (!v) {
        fd = open(PYCONMON_MODE_FILE, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return errno == ENOENT ? SERVER : CLASSIC; /* unreadable: the safe side */
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n < 0)
            return CLASSIC;
        char *word = buf + strspn(buf, " \t\n");
        word[strcspn(word, " \t\n")] = 0;
        v = word;
    }
    if (*v == 0 || strcmp(v, "server") == 0)
        return SERVER;
    return strcmp(v, "always") == 0 ? ALWAYS : CLASSIC;
}

/* CRI-O's ExecSync: legacy exec (-e without --api-version, which Podman always passes) with
 * --sync.  Its monitor is never a unit's MainPID (CRI-O waits for it in the foreground), so
 * CRI-O in crio.service still gets server mode (ZYGOTE R5). */
static int crio_exec_sync(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--api-version", 13) == 0)
            return 0;
    return has_arg(argc, argv, "--sync") && (has_arg(argc, argv, "-e") || has_arg(argc, argv, "--exec"));
}

/* Podman in a systemd service (quadlet, generate systemd, podman-kube@):
 * the monitor may become MainPID and must be systemd's child (ZYGOTE R5). */
static int in_service_cgroup(void)
{
    char buf[8192];
    int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return 1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 1;
    buf[n] = 0;
    for (char *p = strstr(buf, ".service"); p; p = strstr(p + 1, ".service"))
        if (p[8] == '/' || p[8] == '\n' || p[8] == 0)
            return 1;
    return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_file_atomic(const char *path, const char *data)
{
    char tmp[4096];
    const char *slash = strrchr(path, '/');
    int fd;
    if (slash)
        snprintf(tmp, sizeof tmp, "%.*s/.%s.%d.tmp", (int)(slash - path), path, slash + 1, (int)getpid());
    else
        snprintf(tmp, sizeof tmp, ".%s.%d.tmp", path, (int)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    if (write_all(fd, data, strlen(data)) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
        int saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

static const char *conmon_pidfile(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-P") == 0 || strcmp(argv[i], "--conmon-pidfile") == 0) && i + 1 < argc)
            return argv[i + 1];
        if (strncmp(argv[i], "--conmon-pidfile=", 17) == 0)
            return argv[i] + 17;
    }
    return NULL;
}

/* --------------------------------------------------------------- protocol */

static int send_packet(const char *data, size_t len, const int *fds, int nfds)
{
    struct iovec iov = {(void *)data, len};
    struct msghdr msg = {0};
    char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        struct cmsghdr *c;
        memset(cbuf, 0, sizeof cbuf);
        msg.msg_control = cbuf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    while (sendmsg(g_sock, &msg, MSG_NOSIGNAL) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return 0;
}

/* Append a NUL-terminated field; -1 when the packet is full. */
static int put(char *buf, size_t *len, const char *field)
{
    size_t n = strlen(field) + 1;
    if (*len + n > MAX_PACKET)
        return -1;
    memcpy(buf + *len, field, n);
    *len += n;
    return 0;
}

/* One packet: its length (0 at EOF, -1 on error); fds received into fds/nfds. */
static ssize_t recv_packet(char *buf, int *fds, int *nfds)
{
    struct iovec iov = {buf, MAX_PACKET - 1};
    struct msghdr msg = {0};
    char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    ssize_t n;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    do
        n = recvmsg(g_sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    *nfds = 0;
    if (n < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count && *nfds < MAX_FDS; i++)
                memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    buf[n] = 0;
    return n;
}

/* Split a packet body into fields (pointers into buf); the count. */
static int fields_of(char *buf, ssize_t len, char **out, int max)
{
    int n = 0;
    ssize_t i = 1;
    while (i < len && n < max) {
        out[n++] = buf + i;
        i += (ssize_t)strlen(buf + i) + 1;
    }
    return n;
}

/* ---------------------------------------------------------------- server */

/* Is this the initial user namespace (uid_map "0 0 4294967295")?  Rootless Podman runs
 * conmon as uid 0 of the user's own namespace, where /run is not ours to write. */
static int in_initial_userns(void)
{
    unsigned long inside, outside, count;
    char extra[2];
    int initial = 0;
    FILE *f = fopen("/proc/self/uid_map", "re");
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu %lu", &inside, &outside, &count) == 3 && fscanf(f, "%1s", extra) != 1)
        initial = inside == 0 && outside == 0 && count == 4294967295UL;
    fclose(f);
    return initial;
}

/* The server's directory and socket name.  Real root: /run/pyconmon/KEY.sock.  Anyone else
 * (a user, or uid 0 of a user namespace, as under rootless Podman): $XDG_RUNTIME_DIR/pyconmon/,
 * the socket named by the key and the user and mount namespaces too, so that each namespace
 * context of the user gets a server of its own (a server serves only its own context). */
static int socket_path(char *dir, size_t dir_size, char *path, size_t path_size)
{
    struct stat user_ns, mnt_ns;
    if (geteuid() == 0 && in_initial_userns()) {
        snprintf(dir, dir_size, "/run/pyconmon");
        snprintf(path, path_size, "%s/%s.sock", dir, PYCONMON_KEY);
        return 0;
    }
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (!xdg || xdg[0] != '/' || stat("/proc/self/ns/user", &user_ns) < 0 || stat("/proc/self/ns/mnt", &mnt_ns) < 0)
        return -1;
    snprintf(dir, dir_size, "%s/pyconmon", xdg);
    snprintf(path, path_size, "%s/%s-%lu-%lu.sock", dir, PYCONMON_KEY, (unsigned long)user_ns.st_ino,
             (unsigned long)mnt_ns.st_ino);
    return 0;
}

static int connect_to(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd;
    if (strlen(path) >= sizeof addr.sun_path)
        return -1;
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Bind the socket, then start the server on it: a fresh exec of Python,
 * daemonised (own session, /dev/null stdio, no other inherited fd). */
static int start_server(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char lock_path[4096 + 8];
    int lock, lfd, fd;
    pid_t pid;

    snprintf(lock_path, sizeof lock_path, "%s.lock", path);
    lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX) < 0)
        return -1;
    fd = connect_to(path); /* another stub may have started it meanwhile */
    if (fd >= 0) {
        close(lock);
        return fd;
    }
    unlink(path);
    strcpy(addr.sun_path, path);
    lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1024) < 0) {
        close(lock);
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        if (fork() != 0)
            _exit(0);
        setsid();
        if (chdir("/") < 0) /* the caller's directory must not stay busy while the server lives */
            _exit(127);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        dup2(lfd, 3); /* dup2 clears close-on-exec */
        syscall(SYS_close_range, 4, ~0U, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        char *args[] = {"pyconmon-server", "-I", "-S", "-c",
                        "import sys; sys.path.insert(0, '" PYCONMON_LIBDIR "'); "
                        "from pyconmon.server import main; sys.exit(main(sys.argv[1:]))",
                        "--listen-fd", "3", "--socket", (char *)path, "--key", PYCONMON_KEY, NULL};
        char *env[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
        execve(PYCONMON_PYEXE, args, env);
        _exit(127);
    }
    close(lfd);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    fd = connect_to(path);
    close(lock);
    return fd;
}

static int connect_server(void)
{
    char dir[4000], path[4096];
    struct stat st;
    int fd;
    if (socket_path(dir, sizeof dir, path, sizeof path) < 0)
        return -1;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -1;
    /* Only a private directory of our own: nobody else can plant a server. */
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return -1;
    fd = connect_to(path);
    if (fd < 0)
        fd = start_server(path);
    return fd;
}

static int send_hello(int argc, char **argv)
{
    size_t len = 1;
    char cwd[4096], num[32];
    g_packet[0] = 'H';
    if (!getcwd(cwd, sizeof cwd))
        return -1;
    snprintf(num, sizeof num, "%d", argc);
    if (put(g_packet, &len, PYCONMON_KEY) || put(g_packet, &len, cwd) || put(g_packet, &len, num))
        return -1;
    for (int i = 0; i < argc; i++)
        if (put(g_packet, &len, argv[i]))
            return -1;
    for (char **e = environ; *e; e++)
        if (put(g_packet, &len, *e))
            return -1;
    return send_packet(g_packet, len, NULL, 0);
}

/* 'O': the server will serve; anything else (or nothing in time): classic. */
static int hello_answer(void)
{
    struct pollfd p = {g_sock, POLLIN, 0};
    int fds[MAX_FDS], nfds;
    ssize_t n;
    if (poll(&p, 1, HELLO_TIMEOUT_MS) <= 0)
        return -1;
    n = recv_packet(g_packet, fds, &nfds);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (n < 1 || g_packet[0] != 'O')
        return -1;
    if (n > 2) /* what the monitor says on the caller's stderr before it detaches */
        write_all(2, g_packet + 1, strlen(g_packet + 1));
    return 0;
}

/* --------------------------------------------------------------- children */

static void send_status(pid_t pid, int status)
{
    char buf[64];
    int n = snprintf(buf, sizeof buf, "X%d%c%d%c", (int)pid, 0, status, 0);
    send_packet(buf, (size_t)n, NULL, 0);
}

static int reaped_target;

static void note_status(pid_t pid, int status)
{
    if (pid == g_target_pid) {
        reaped_target = 1;
        g_target_status = status;
    }
    if (pid == g_runtime_pid) {
        g_runtime_reaped = 1;
        g_runtime_status = status;
    }
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        note_status(pid, status);
        send_status(pid, status);
    }
}

/* For the runtime and the exit command: what the classic monitor resets (the rest of the
 * caller's dispositions is inherited, as there). */
static void reset_child_signals(void)
{
    sigset_t none;
    int reset[] = {SIGPIPE, SIGTERM, SIGINT, SIGQUIT, SIGCHLD};
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++)
        signal(reset[i], SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* 'P' names...: keep each fd under its name (one sent again replaces the earlier). */
static void keep_fds(char **f, int nf, int *fds, int nfds)
{
    for (int i = 0; i < nfds; i++) {
        int slot = -1;
        for (int k = 0; i < nf && k < N_KEPT; k++)
            if (strcmp(f[i], KEPT[k]) == 0)
                slot = k;
        if (slot < 0) {
            close(fds[i]);
            continue;
        }
        if (g_kept[slot] >= 0)
            close(g_kept[slot]);
        g_kept[slot] = fds[i];
    }
}

/* 'D' name: the server closed its own (the stdin pipe at EOF): so must we. */
static void drop_fd(char **f, int nf)
{
    for (int k = 0; nf > 0 && k < N_KEPT; k++)
        if (strcmp(f[0], KEPT[k]) == 0 && g_kept[k] >= 0) {
            close(g_kept[k]);
            g_kept[k] = -1;
        }
}

/* 'F' flags, stdio map, preserve count, argc, argv..., env...
 * fds: the child's stdio (as the map says). */
static void fork_runtime(char **f, int nf, int *fds, int nfds)
{
    char errbuf[256];
    size_t len;
    int argc;
    if (nf < 5 || (argc = atoi(f[3])) < 1 || 4 + argc > nf)
        goto bad;
    const char *flags = f[0], *map = f[1];
    int preserve = atoi(f[2]);
    int nchild = 0;
    for (const char *m = map; *m; m++)
        nchild += *m != '-';
    if (nchild != nfds)
        goto bad;
    char **argv = calloc((size_t)argc + 1, sizeof *argv);
    char **env = calloc((size_t)(nf - 4 - argc) + 2, sizeof *env);
    if (!argv || !env)
        goto bad;
    for (int i = 0; i < argc; i++)
        argv[i] = f[4 + i];
    int ne = 0;
    for (int i = 4 + argc; i < nf; i++)
        env[ne++] = f[i];
    pid_t pid = fork();
    if (pid == 0) {
        reset_child_signals();
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        for (int t = 0; t < 3 && map[t]; t++) {
            int idx = map[t] - '0';
            dup2(map[t] != '-' && idx >= 0 && idx < nfds ? fds[idx] : null, t);
        }
        for (int fd = 3; fd < 3 + preserve; fd++) {
            int fl = fcntl(fd, F_GETFD);
            if (fl >= 0)
                fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
        }
        if (strchr(flags, 'A') && g_start_fd >= 0) {
            static char b[8192]; /* one message, whatever its length, as conmon's read(BUF_SIZE) */
            while (read(g_start_fd, b, sizeof b) < 0 && errno == EINTR)
                ;
        }
        if (g_old_oom[0])
            set_oom(g_old_oom);
        if (strchr(flags, 'L')) {
            static char lp[64];
            snprintf(lp, sizeof lp, "LISTEN_PID=%d", (int)getpid());
            for (int i = 0; i < ne; i++)
                if (strncmp(env[i], "LISTEN_PID=", 11) == 0)
                    env[i] = lp;
        }
        execve(argv[0], argv, env);
        dprintf(2, "Failed to exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int err = errno;
    free(argv);
    free(env);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (pid < 0) {
        snprintf(errbuf, sizeof errbuf, "R0%c%s", 0, strerror(err));
        len = 3 + strlen(strerror(err)) + 1;
        send_packet(errbuf, len, NULL, 0);
        return;
    }
    g_runtime_pid = pid;
    /* Our copies of the sync and attach pipes stay until 'Q', for a takeover; a classic
     * monitor holds them as long. */
    if (g_start_fd >= 0 && !strchr(flags, 'A')) {
        close(g_start_fd);
        g_start_fd = -1;
    }
    snprintf(errbuf, sizeof errbuf, "R%d", (int)pid);
    send_packet(errbuf, strlen(errbuf) + 1, NULL, 0);
    return;
bad:
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    send_packet("R0\0bad fork request", 20, NULL, 0);
}

static void watch(pid_t pid)
{
    g_target_pid = pid;
    reap();
    if (reaped_target)
        return;
    if (g_held_signal) {
        kill(pid, g_held_signal);
        g_held_signal = 0;
    }
    g_pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (g_pidfd < 0) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/%d", (int)pid);
        if (access(proc, F_OK) < 0)
            send_status(pid, -1);
    }
}

/* 'Q' code, delay, exit command argv...: as run_exit_command in exitfiles.py. */
static void quit(char **f, int nf)
{
    int code = nf > 0 ? atoi(f[0]) : 1;
    int delay = nf > 1 ? atoi(f[1]) : 0;
    int status = 0;
    close(g_sock);
    if (nf > 2) {
        reset_child_signals();
        syscall(SYS_close_range, 3, ~0U, 0);
        prctl(PR_SET_CHILD_SUBREAPER, 0);
        pid_t pid = fork();
        if (pid == 0) {
            if (delay > 0)
                sleep((unsigned)delay);
            if (g_old_oom[0])
                set_oom(g_old_oom);
            f[nf] = NULL;
            execv(f[2], &f[2]);
            dprintf(2, "[conmon:e]: Failed to exec exit command %s: %s\n", f[2], strerror(errno));
            _exit(127);
        }
        int st;
        pid_t w;
        while ((w = waitpid(-1, &st, 0)) > 0 || (w < 0 && errno == EINTR))
            if (w == pid)
                status = st;
        int ec = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 0;
        if (ec)
            _exit(ec);
    }
    _exit(code & 0xff);
}

/* The server went away.  Before the runtime runs: the classic monitor takes
 * over (resumed: no start byte, no fork).  After: it adopts the container with
 * what we kept; with nothing kept (no server ever sent 'P'), nobody reads the
 * container's output any more, as when C conmon is killed. */
static void server_lost(void)
{
    int kept = 0;
    for (int k = 0; k < N_KEPT; k++)
        kept |= g_kept[k] >= 0;
    if (!g_runtime_pid && g_sync_fd >= 0)
        exec_classic(1);
    if (g_runtime_pid && g_sync_fd >= 0 && kept) {
        /* The runtime has been forked: wait for it, then the classic monitor adopts the
         * container with our copies of its pipes, pty, attach listener and FIFOs
         * (src/pyconmon/takeover.py). */
        int status;
        pid_t pid;
        while (!g_runtime_reaped && ((pid = waitpid(-1, &status, 0)) > 0 || errno == EINTR))
            if (pid > 0)
                note_status(pid, status);
        if (g_runtime_reaped) {
            char adopt[256], target_status[24] = "x";
            int len;
            if (reaped_target)
                snprintf(target_status, sizeof target_status, "%d", g_target_status);
            len = snprintf(adopt, sizeof adopt, "%d %d %d %s", g_runtime_status, g_target_pid ? 1 : 0,
                           (int)g_target_pid, target_status);
            for (int k = 0; k < N_KEPT; k++) {
                len += snprintf(adopt + len, sizeof adopt - (size_t)len, " %d", g_kept[k]);
                keep_across_exec(g_kept[k]);
            }
            setenv("_PYCONMON_ADOPT", adopt, 1);
            exec_classic(1);
        }
    }
    if (g_target_pid && !reaped_target) {
        int status;
        while (waitpid(-1, &status, 0) > 0 || errno == EINTR)
            ;
    }
    _exit(1);
}

static void serve(void)
{
    sigset_t set;
    int sfd;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    /* An ignored signal never reaches a signalfd (and an ignored SIGCHLD reaps by itself):
     * a caller started from a background shell job hands us SIGINT and SIGQUIT ignored. */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    sfd = signalfd(-1, &set, SFD_CLOEXEC);
    for (;;) {
        struct pollfd p[3] = {{g_sock, POLLIN, 0}, {sfd, POLLIN, 0}, {g_pidfd, POLLIN, 0}};
        int n = poll(p, g_pidfd >= 0 ? 3 : 2, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            server_lost();
        }
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    reap();
                } else {
                    /* As the classic monitor: to the container once its pid is known, else to the
                     * runtime while it runs.  In between (the server has the pid, its 'W' is on the
                     * way) the signal waits for 'W': the runtime's pid may already be reused. */
                    pid_t target = g_target_pid ? g_target_pid : g_runtime_reaped ? 0 : g_runtime_pid;
                    if (target) {
                        kill(target, (int)si.ssi_signo);
                    } else if (g_runtime_pid) {
                        g_held_signal = (int)si.ssi_signo;
                    } else if (si.ssi_signo == SIGTERM) {
                        /* Nothing to forward it to yet: it ends the monitor, as in C conmon. */
                        signal(SIGTERM, SIG_DFL);
                        sigprocmask(SIG_UNBLOCK, &set, NULL);
                        raise(SIGTERM);
                        _exit(1);
                    }
                }
                break;
            }
        }
        if (g_pidfd >= 0 && (p[2].revents & (POLLIN | POLLHUP))) {
            close(g_pidfd);
            g_pidfd = -1;
            reap();
            if (!reaped_target)
                send_status(g_target_pid, -1); /* exited, but not our child */
        }
        if (p[0].revents) {
            int fds[MAX_FDS], nfds;
            char *f[65536];
            ssize_t len = recv_packet(g_packet, fds, &nfds);
            if (len <= 0) {
                for (int i = 0; i < nfds; i++)
                    close(fds[i]);
                server_lost();
            }
            int nf = fields_of(g_packet, len, f, 65535);
            switch (g_packet[0]) {
            case 'F':
                fork_runtime(f, nf, fds, nfds);
                break;
            case 'P':
                keep_fds(f, nf, fds, nfds);
                break;
            case 'D':
                drop_fd(f, nf);
                for (int i = 0; i < nfds; i++)
                    close(fds[i]);
                break;
            case 'W':
                if (nf > 0)
                    watch((pid_t)atoi(f[0]));
                break;
            case 'K': /* answered, so that the server writes the exit files only after this */
                for (int i = 0; i < g_n_inherited; i++)
                    close(g_inherited[i]);
                g_n_inherited = 0;
                send_packet("k", 1, NULL, 0);
                break;
            case 'Q':
                quit(f, nf);
                break;
            default:
                for (int i = 0; i < nfds; i++)
                    close(fds[i]);
            }
        }
    }
}

/* ------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    int version_status = answer_version(argc, argv);
    if (version_status >= 0)
        return version_status;
    g_argv = argv;
    enum mode mode = mode_wanted();
    if (mode == CLASSIC || has_arg(argc, argv, "--version") ||
        has_arg(argc, argv, "--help") || has_arg(argc, argv, "-h") || unserved_log_driver(argc, argv) ||
        (mode == SERVER && in_service_cgroup() && !crio_exec_sync(argc, argv)))
        exec_classic(0);
    g_start_fd = env_fd("_OCI_STARTPIPE");
    g_sync_fd = env_fd("_OCI_SYNCPIPE");
    g_attach_fd = env_fd("_OCI_ATTACHPIPE");
    if (g_start_fd == -2 || g_sync_fd == -2 || g_attach_fd == -2)
        exec_classic(0); /* classic reports the bad number */
    g_packet = malloc(MAX_PACKET);
    if (!g_packet)
        exec_classic(0);
    g_sock = connect_server();
    if (g_sock < 0 || send_hello(argc, argv) < 0 || hello_answer() < 0)
        exec_classic(0);

    /* Served.  From here on: what C conmon does before it runs the runtime. */
    if (g_start_fd >= 0) {
        static char b[8192]; /* one message, whatever its length, as conmon's read(BUF_SIZE) */
        while (read(g_start_fd, b, sizeof b) < 0 && errno == EINTR)
            ;
        if (!has_arg(argc, argv, "--exec-attach")) {
            close(g_start_fd);
            g_start_fd = -1;
        }
    }
    umask(022);
    int oom = open("/proc/self/oom_score_adj", O_RDWR | O_CLOEXEC);
    if (oom >= 0) {
        ssize_t n = read(oom, g_old_oom, sizeof g_old_oom - 1);
        g_old_oom[n > 0 ? n : 0] = 0;
        char *nl = strchr(g_old_oom, '\n');
        if (nl)
            *nl = 0;
        if (lseek(oom, 0, SEEK_SET) < 0 || write_all(oom, "-1000", 5) < 0)
            g_old_oom[0] = 0;
        close(oom);
    }
    signal(SIGPIPE, SIG_IGN);

    /* --sync (CRI-O's ExecSync): no fork; the caller waits for this very process, signals it
     * (SIGINT when the container stops) and takes its exit status as the command's. */
    int sync_mode = has_arg(argc, argv, "--sync");
    pid_t child = sync_mode ? 0 : fork();
    if (child < 0)
        exec_classic(1);
    const char *pidfile = conmon_pidfile(argc, argv);
    if (child > 0 || (sync_mode && pidfile)) {
        if (pidfile) {
            char buf[32];
            snprintf(buf, sizeof buf, "%d", child > 0 ? (int)child : (int)getpid());
            if (write_file_atomic(pidfile, buf) < 0) {
                fprintf(stderr, "[conmon:e]: Failed to write conmon pidfile: %s\n", strerror(errno));
                if (child > 0)
                    kill(child, SIGKILL);
                _exit(1);
            }
        }
        if (child > 0)
            _exit(0);
    }

    /* The caller's descriptors (port reservations, slirp's exit fd...) live
     * as long as the monitor and are closed before the exit file. */
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        int fd = atoi(de->d_name), fl;
        if (fd < 3 || fd == dirfd(dir) || (fl = fcntl(fd, F_GETFD)) < 0)
            continue;
        fcntl(fd, F_SETFD, fl | FD_CLOEXEC); /* the runtime gets only its stdio and preserved fds */
        if (fd == g_sock || fd == g_sync_fd || fd == g_attach_fd || fd == g_start_fd)
            continue;
        if (g_n_inherited < MAX_INHERITED)
            g_inherited[g_n_inherited++] = fd;
    }
    if (dir)
        closedir(dir);
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 2)
        close(null);
    setsid();
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    /* 'S' pid, old oom_score_adj, names of the fds that follow. */
    {
        size_t len = 1;
        char pid[32];
        int fds[2], nfds = 0;
        g_packet[0] = 'S';
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        put(g_packet, &len, pid);
        put(g_packet, &len, g_old_oom);
        if (g_sync_fd >= 0) {
            put(g_packet, &len, "sync");
            fds[nfds++] = g_sync_fd;
        }
        if (g_attach_fd >= 0) {
            put(g_packet, &len, "attach");
            fds[nfds++] = g_attach_fd;
        }
        if (send_packet(g_packet, len, fds, nfds) < 0)
            server_lost();
    }
    serve();
    return 0;
}
