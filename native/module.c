/* mote_edge._native: Python entry points for the C kernels.
 *
 * This file only converts and checks arguments (sizes in bytes; the wrapper
 * mote_edge/quant/kernels.py also checks dtypes and shapes) and releases the GIL; the kernels
 * live in their own files.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cpu.h"
#include "kernels.h"
#include "threads.h"

static PyObject *py_cpu_features(PyObject *self, PyObject *noargs) {
    mote_cpu_features f = mote_detect_cpu();
    return Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O}",
                         "avx2", f.avx2 ? Py_True : Py_False,
                         "fma", f.fma ? Py_True : Py_False,
                         "avx512f", f.avx512f ? Py_True : Py_False,
                         "avx512bw", f.avx512bw ? Py_True : Py_False,
                         "avx512vnni", f.avx512vnni ? Py_True : Py_False,
                         "avx512vbmi", f.avx512vbmi ? Py_True : Py_False,
                         "asimd", f.asimd ? Py_True : Py_False,
                         "asimddp", f.asimddp ? Py_True : Py_False);
}

/* ---- kernel path ---- */
static PyObject *py_kernel_path(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(mote_path_name(mote_get_path()));
}

static PyObject *py_available_paths(PyObject *self, PyObject *noargs) {
    PyObject *list = PyList_New(0);
    for (int p = MOTE_PATH_SCALAR; list && p < MOTE_PATH_AUTO; p++) {
        if (!mote_path_supported((mote_path)p)) continue;
        PyObject *s = PyUnicode_FromString(mote_path_name((mote_path)p));
        if (!s || PyList_Append(list, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(s);
    }
    return list;
}

static PyObject *py_set_kernel_path(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int p = MOTE_PATH_SCALAR; p <= MOTE_PATH_AUTO; p++) {
        if (strcmp(name, mote_path_name((mote_path)p)) != 0) continue;
        if (mote_set_path((mote_path)p) != 0) {
            PyErr_Format(PyExc_ValueError, "kernel path '%s' is not supported by this CPU", name);
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_ValueError, "unknown kernel path '%s' (auto, scalar, avx2, avx512, neon, dotprod)", name);
    return NULL;
}

/* ---- argument checks ---- */
/* K and N up to 2^28 keep every size product below (buffer lengths in long long, row
 * arithmetic such as (K + G - 1) in int) far from overflow. */
#define MOTE_MAX_DIM (1 << 28)
#define MOTE_MAX_ELEMENTS (1LL << 40)

static int check_dims(int T, int K, int N, int threads) {
    if (T < 0 || K < 0 || N < 0) {
        PyErr_Format(PyExc_ValueError, "T, K, N must be >= 0 (got %d, %d, %d)", T, K, N);
        return -1;
    }
    if (K > MOTE_MAX_DIM || N > MOTE_MAX_DIM) {
        PyErr_Format(PyExc_ValueError, "K and N must be at most %d (got %d, %d)", MOTE_MAX_DIM, K, N);
        return -1;
    }
    if (threads < 1 || threads > 256) {
        PyErr_Format(PyExc_ValueError, "threads must be in 1..256, got %d", threads);
        return -1;
    }
    if ((long long)T * ((long long)K + 640) > MOTE_MAX_ELEMENTS) {
        PyErr_SetString(PyExc_ValueError, "T * K too large");
        return -1;
    }
    if ((long long)T * N > MOTE_MAX_ELEMENTS) {
        PyErr_SetString(PyExc_ValueError, "T * N too large");
        return -1;
    }
    return 0;
}

static int check_len(const Py_buffer *b, long long want, const char *name) {
    if ((long long)b->len != want) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %lld", name, b->len, want);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].obj) PyBuffer_Release(&bufs[i]);
}

/* ---- ternary ---- */
static PyObject *ternary_common(PyObject *args, int prequant, int tpb) {
    Py_buffer b[5] = {{0}};   /* packed, x | xq, s, out */
    float gamma;
    int T, K, N, threads = 1, rc = -2;
    if (prequant) {
        if (!PyArg_ParseTuple(args, "y*fy*y*iiiw*|i", &b[0], &gamma, &b[1], &b[2], &T, &K, &N, &b[3], &threads))
            return NULL;
    } else if (!PyArg_ParseTuple(args, "y*fy*iiiw*|i", &b[0], &gamma, &b[1], &T, &K, &N, &b[3], &threads)) {
        return NULL;
    }
    if (check_dims(T, K, N, threads) || check_len(&b[0], (long long)N * (((long long)K + tpb - 1) / tpb), "packed") ||
        check_len(&b[1], (long long)T * K * (prequant ? 1 : 4), prequant ? "xq" : "x") ||
        (prequant && check_len(&b[2], (long long)T * 4, "s")) || check_len(&b[3], (long long)T * N * 4, "out"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = mote_ternary_matmul(tpb, b[0].buf, gamma, prequant ? NULL : b[1].buf, prequant ? b[1].buf : NULL,
                             prequant ? b[2].buf : NULL, T, K, N, b[3].buf, threads);
    Py_END_ALLOW_THREADS
    if (rc != 0) PyErr_NoMemory();
done:
    release(b, 5);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_ternary_matmul(PyObject *self, PyObject *args) { return ternary_common(args, 0, MOTE_TPB_FILE); }
static PyObject *py_ternary_matmul_q8(PyObject *self, PyObject *args) { return ternary_common(args, 1, MOTE_TPB_FILE); }
static PyObject *py_ternary2_matmul(PyObject *self, PyObject *args) { return ternary_common(args, 0, MOTE_TPB_SLAB2); }
static PyObject *py_ternary2_matmul_q8(PyObject *self, PyObject *args) { return ternary_common(args, 1, MOTE_TPB_SLAB2); }

static PyObject *py_ternary_file_to_slab2(PyObject *self, PyObject *args) {
    Py_buffer b[2] = {{0}};   /* src, dst */
    int N, K, rc = -2;
    if (!PyArg_ParseTuple(args, "y*iiw*", &b[0], &N, &K, &b[1])) return NULL;
    if (check_dims(1, K, N, 1) || check_len(&b[0], (long long)N * (((long long)K + 4) / 5), "packed") ||
        check_len(&b[1], (long long)N * (((long long)K + 3) / 4), "out"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = mote_ternary_file_to_slab2(b[0].buf, N, K, b[1].buf);
    Py_END_ALLOW_THREADS
    if (rc != 0) PyErr_NoMemory();
done:
    release(b, 2);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- int-N ---- */
static PyObject *py_intn_matmul(PyObject *self, PyObject *args) {
    Py_buffer b[5] = {{0}};   /* packed, scales, zeros, x, out */
    int bits, G, T, K, N, threads = 1, rc = -2;
    long long ng;
    if (!PyArg_ParseTuple(args, "y*y*y*iiy*iiiw*|i", &b[0], &b[1], &b[2], &bits, &G, &b[3], &T, &K, &N, &b[4],
                          &threads))
        return NULL;
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
        PyErr_Format(PyExc_ValueError, "bits must be 2, 3, 4 or 8, got %d", bits);
        goto done;
    }
    if (G != 32 && G != 64 && G != 128) {
        PyErr_Format(PyExc_ValueError, "group_size must be 32, 64 or 128, got %d", G);
        goto done;
    }
    if (check_dims(T, K, N, threads)) goto done;
    ng = ((long long)K + G - 1) / G;
    if (check_len(&b[0], (long long)N * ng * G * bits / 8, "packed") ||
        check_len(&b[1], (long long)N * ng * 2, "scales") || check_len(&b[2], (long long)N * ng * 2, "zeros") ||
        check_len(&b[3], (long long)T * K * 4, "x") || check_len(&b[4], (long long)T * N * 4, "out"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = mote_intn_matmul(b[0].buf, b[1].buf, b[2].buf, bits, G, b[3].buf, T, K, N, b[4].buf, threads);
    Py_END_ALLOW_THREADS
    if (rc != 0) PyErr_NoMemory();
done:
    release(b, 5);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- memory bandwidth probe ---- */
typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sums[256];
} read_job;

static void read_task(void *ctx, int i, int n) {
    read_job *j = (read_job *)ctx;
    size_t a = j->n * (size_t)i / (size_t)n, b = j->n * (size_t)(i + 1) / (size_t)n;
    j->sums[i] = mote_read_sum(j->p + a, b - a);
}

static PyObject *py_read_sum(PyObject *self, PyObject *args) {
    Py_buffer b = {0};
    int threads = 1;
    if (!PyArg_ParseTuple(args, "y*|i", &b, &threads)) return NULL;
    if (threads < 1 || threads > 256) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "threads must be in 1..256, got %d", threads);
        return NULL;
    }
    read_job j = {(const uint64_t *)b.buf, (size_t)b.len / 8, {0}};
    uint64_t total = 0;
    Py_BEGIN_ALLOW_THREADS
    mote_parallel(threads, read_task, &j);
    for (int i = 0; i < threads; i++) total += j.sums[i];
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(total);
}

static PyObject *py_crc32(PyObject *self, PyObject *args) {
    Py_buffer b = {0};
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &crc)) return NULL;
    uint32_t out;
    Py_BEGIN_ALLOW_THREADS
    out = mote_crc32((uint32_t)crc, (const uint8_t *)b.buf, (size_t)b.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(out);
}

static PyObject *py_crc32_path(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(mote_crc32_simd() ? "clmul" : "scalar");
}

static PyMethodDef native_methods[] = {
    {"cpu_features", py_cpu_features, METH_NOARGS,
     "cpu_features() -> dict: which SIMD instruction sets this CPU supports (run-time detection)."},
    {"kernel_path", py_kernel_path, METH_NOARGS, "kernel_path() -> str: 'scalar', 'avx2', 'avx512', 'neon' or 'dotprod' (in use)."},
    {"available_paths", py_available_paths, METH_NOARGS, "available_paths() -> list[str]: paths this CPU runs."},
    {"set_kernel_path", py_set_kernel_path, METH_VARARGS,
     "set_kernel_path(name): force 'scalar' | 'avx2' | 'avx512' | 'neon' | 'dotprod', or 'auto'. ValueError if unsupported."},
    {"ternary_matmul", py_ternary_matmul, METH_VARARGS,
     "ternary_matmul(packed u8, gamma, x f32[T,K], T, K, N, out f32[T,N], threads=1): BitLinear y = x W^T."},
    {"ternary_matmul_q8", py_ternary_matmul_q8, METH_VARARGS,
     "ternary_matmul_q8(packed, gamma, xq i8[T,K], s f32[T], T, K, N, out, threads=1): pre-quantized x."},
    {"ternary2_matmul", py_ternary2_matmul, METH_VARARGS,
     "ternary2_matmul(packed2 u8, gamma, x, T, K, N, out, threads=1): the same from the 2-bit slab layout."},
    {"ternary2_matmul_q8", py_ternary2_matmul_q8, METH_VARARGS,
     "ternary2_matmul_q8(packed2, gamma, xq, s, T, K, N, out, threads=1): 2-bit slab layout, pre-quantized x."},
    {"ternary_file_to_slab2", py_ternary_file_to_slab2, METH_VARARGS,
     "ternary_file_to_slab2(packed u8 [N*ceil(K/5)], N, K, out u8 [N*ceil(K/4)]): re-lay to the 2-bit slab layout."},
    {"intn_matmul", py_intn_matmul, METH_VARARGS,
     "intn_matmul(packed, scales f16, zeros f16, bits, group, x f32[T,K], T, K, N, out f32[T,N], threads=1)."},
    {"read_sum", py_read_sum, METH_VARARGS, "read_sum(buf, threads=1) -> int: sum of uint64 words (bandwidth probe)."},
    {"crc32", py_crc32, METH_VARARGS,
     "crc32(buf, crc=0) -> int: zlib's CRC-32 of buf continuing from crc (GIL released)."},
    {"crc32_path", py_crc32_path, METH_NOARGS, "crc32_path() -> str: 'clmul' or 'scalar' (the CRC-32 path in use)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "mote-edge C kernels (ternary and int-N matmuls).", -1,
    native_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
