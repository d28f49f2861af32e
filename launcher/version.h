/*
 * `conmon --version`, answered without starting Python: Podman runs it before
 * every container start and exec (and CRI-O at start-up).  The text comes
 * from pyconmon.cli.version_text at build time (-DPYCONMON_VERSION_TEXT).
 * Shared by the classic launcher (conmon.c) and the server-mode stub (stub.c).
 */
#ifndef PYCONMON_VERSION_H
#define PYCONMON_VERSION_H

#include <stdio.h>
#include <string.h>

/* -1 if argv is not a bare --version; else the exit status. */
static int answer_version(int argc, char **argv)
{
#ifdef PYCONMON_VERSION_TEXT
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        fputs(PYCONMON_VERSION_TEXT, stdout);
        return fflush(stdout) == 0 ? 0 : 1;
    }
#else
    (void)argc;
    (void)argv;
#endif
    return -1;
}

#endif
