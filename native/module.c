/* mote_edge._native: Python entry points for the C kernels.
 *
 * This file only converts arguments and releases the GIL; the kernels live in their own files.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cpu.h"

static PyObject *py_cpu_features(PyObject *self, PyObject *noargs) {
    mote_cpu_features f = mote_detect_cpu();
    return Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O}",
                         "avx2", f.avx2 ? Py_True : Py_False,
                         "fma", f.fma ? Py_True : Py_False,
                         "avx512f", f.avx512f ? Py_True : Py_False,
                         "avx512bw", f.avx512bw ? Py_True : Py_False,
                         "avx512vnni", f.avx512vnni ? Py_True : Py_False,
                         "avx512vbmi", f.avx512vbmi ? Py_True : Py_False);
}

static PyMethodDef native_methods[] = {
    {"cpu_features", py_cpu_features, METH_NOARGS,
     "cpu_features() -> dict: which SIMD instruction sets this CPU supports (run-time detection)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "mote-edge C kernels (ternary and int-N matmuls).", -1,
    native_methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
