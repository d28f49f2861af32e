/*
 * conmon: the installed pyconmon monitor.
 *
 * A tiny program that embeds the system's libpython and runs
 * pyconmon.cli.main(sys.argv[1:]).  It exists so that the monitor is a real
 * executable named `conmon`: /proc/PID/exe ends in /conmon and
 * /proc/PID/comm reads "conmon" (a `#!/usr/bin/python3` script would show
 * the interpreter instead), and so that it starts the same way whatever
 * environment the caller hands it (CRI-O passes a minimal one: no PYTHONPATH,
 * no HOME, no LANG).
 *
 * The interpreter is configured isolated: no PYTHON* variables, no site, no
 * user site, no bytecode writing, no current directory on sys.path, and UTF-8
 * mode (file names and arguments round-trip as bytes via surrogateescape, as
 * `python3 -I` does in the C locale).  sys.path is fixed at build time:
 *
 *     [PYCONMON_LIBDIR, <python>.zip, <stdlib>, <lib-dynload>]
 *
 * PYCONMON_LIBDIR is the directory that holds the `pyconmon` package
 * ($(PREFIX)/lib/pyconmon); the others come from the Python the launcher is
 * built against.  Py_RunMain() runs the bootstrap, so a traceback goes to
 * stderr and a SystemExit code becomes the exit status, just as with
 * `python3 -c`.
 *
 * Build flags (see the Makefile):
 *   -DPYCONMON_LIBDIR="..."      required
 *   -DPYCONMON_PYHOME="..."      sys.prefix of that Python (e.g. /usr)
 *   -DPYCONMON_PYEXE="..."       sys.executable (e.g. /usr/bin/python3.11)
 *   -DPYCONMON_STDLIB="..."      stdlib dir (e.g. /usr/lib/python3.11)
 *   -DPYCONMON_DYNLOAD="..."     extension module dir (lib-dynload)
 *   -DPYCONMON_ZIP="..."         the stdlib zip entry (need not exist)
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "version.h"

#ifndef PYCONMON_LIBDIR
#error "compile with -DPYCONMON_LIBDIR=\"$(PREFIX)/lib/pyconmon\""
#endif

#define PYCONMON_WIDE_(s) L##s
#define PYCONMON_WIDE(s) PYCONMON_WIDE_(s)

static const char bootstrap[] =
    "import sys\n"
    "from pyconmon.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n";

/*
 * _pyconmon_native: the two libc calls the monitor needs that Python's
 * stdlib lacks.  From a checkout they go through ctypes (pyconmon.process);
 * the installed monitor gets them here and never imports ctypes, which
 * saves ~4 ms of start-up and ~0.6 MB of private memory per container.
 */
static PyObject *native_prctl(PyObject *self, PyObject *args)
{
    int option;
    unsigned long arg;
    (void)self;
    if (!PyArg_ParseTuple(args, "ik", &option, &arg))
        return NULL;
    if (prctl(option, arg, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *native_mallopt(PyObject *self, PyObject *args)
{
    int param, value;
    (void)self;
    if (!PyArg_ParseTuple(args, "ii", &param, &value))
        return NULL;
    return PyLong_FromLong(mallopt(param, value));
}

static PyMethodDef native_methods[] = {
    {"prctl", native_prctl, METH_VARARGS, "prctl(option, arg): prctl(2) with one argument."},
    {"mallopt", native_mallopt, METH_VARARGS, "mallopt(param, value): mallopt(3)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_pyconmon_native", "libc calls for pyconmon.", -1, native_methods,
    NULL, NULL, NULL, NULL,
};

static PyObject *native_init(void)
{
    return PyModule_Create(&native_module);
}

static int fail(PyConfig *config, PyStatus status)
{
    PyConfig_Clear(config);
    if (PyStatus_IsExit(status))
        return status.exitcode;
    /* Prints "Fatal Python error: ..." to stderr and aborts. */
    Py_ExitStatusException(status);
    return 1; /* not reached */
}

static PyStatus append_path(PyConfig *config, const wchar_t *path)
{
    return PyWideStringList_Append(&config->module_search_paths, path);
}

int main(int argc, char **argv)
{
    /* 2 ms instead of 10; with any other argument Python parses the line. */
    int version_status = answer_version(argc, argv);
    if (version_status >= 0)
        return version_status;
    PyStatus status;
    PyPreConfig preconfig;
    PyConfig config;

    /* Pre-initialise: isolated, UTF-8 mode, leave the process locale alone
     * (no LC_CTYPE coercion that would leak into the environment handed to
     * the runtime and the exit command). */
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        Py_ExitStatusException(status);

    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.user_site_directory = 0;
    config.write_bytecode = 0;
    config.parse_argv = 0;          /* sys.argv = argv, untouched */
    config.safe_path = 1;           /* no '' / script dir on sys.path */
    config.buffered_stdio = 1;
    config.install_signal_handlers = 1; /* as python3: SIGPIPE, SIGXFSZ ignored */
    config.pathconfig_warnings = 0; /* never print path warnings (stderr is parsed) */
    /* optimization_level stays 0: with -O/-OO the stdlib's frozen and cached
     * modules don't apply and it is compiled from source at every start
     * (measured: +0.9 MB private memory and slower start). */

    status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (PyStatus_Exception(status))
        return fail(&config, status);

    status = PyConfig_SetString(&config, &config.program_name, L"conmon");
    if (PyStatus_Exception(status))
        return fail(&config, status);

#ifdef PYCONMON_PYHOME
    status = PyConfig_SetString(&config, &config.home, PYCONMON_WIDE(PYCONMON_PYHOME));
    if (PyStatus_Exception(status))
        return fail(&config, status);
#endif
#ifdef PYCONMON_PYEXE
    /* sys.executable names a real interpreter, so that code which runs
     * [sys.executable, "-c", ...] keeps working; the monitor itself is
     * /proc/self/exe. */
    status = PyConfig_SetString(&config, &config.executable, PYCONMON_WIDE(PYCONMON_PYEXE));
    if (PyStatus_Exception(status))
        return fail(&config, status);
#endif

    config.module_search_paths_set = 1;
    status = append_path(&config, PYCONMON_WIDE(PYCONMON_LIBDIR));
    if (PyStatus_Exception(status))
        return fail(&config, status);
#ifdef PYCONMON_ZIP
    status = append_path(&config, PYCONMON_WIDE(PYCONMON_ZIP));
    if (PyStatus_Exception(status))
        return fail(&config, status);
#endif
#ifdef PYCONMON_STDLIB
    status = append_path(&config, PYCONMON_WIDE(PYCONMON_STDLIB));
    if (PyStatus_Exception(status))
        return fail(&config, status);
#endif
#ifdef PYCONMON_DYNLOAD
    status = append_path(&config, PYCONMON_WIDE(PYCONMON_DYNLOAD));
    if (PyStatus_Exception(status))
        return fail(&config, status);
#endif

    status = PyConfig_SetBytesString(&config, &config.run_command, bootstrap);
    if (PyStatus_Exception(status))
        return fail(&config, status);

    if (PyImport_AppendInittab("_pyconmon_native", native_init) < 0)
        return fail(&config, PyStatus_NoMemory());

    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        if (PyStatus_IsExit(status))
            return status.exitcode;
        Py_ExitStatusException(status);
    }

    /* Runs the bootstrap; prints a traceback to stderr on an uncaught
     * exception (status 1); SystemExit(n) gives n; finalises Python. */
    return Py_RunMain();
}
