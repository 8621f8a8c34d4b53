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
#include "layer.h"
#include "route.h"
#include "scratch.h"
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
    int bits, G, T, K, N, threads = 1, layout = MOTE_INTN_ROWS, rc = -2;
    long long ng;
    if (!PyArg_ParseTuple(args, "y*y*y*iiy*iiiw*|ii", &b[0], &b[1], &b[2], &bits, &G, &b[3], &T, &K, &N, &b[4],
                          &threads, &layout))
        return NULL;
    if (layout != MOTE_INTN_ROWS && !mote_intn_il16_ok(layout, bits, G, N)) {
        PyErr_Format(PyExc_ValueError, "layout %d: 0 (rows) or 1 (16-row interleaved: bits 4 or 8, group_size 128, "
                     "N %% 16 == 0), got bits %d, group_size %d, N %d", layout, bits, G, N);
        goto done;
    }
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
    rc = mote_intn_matmul_layout(b[0].buf, b[1].buf, b[2].buf, bits, G, layout, b[3].buf, T, K, N, b[4].buf, threads);
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

/* ---- decoder layer, one decode step (layer.c) ----
 * A weight travels as a "linear spec" tuple (runtime/native_layer.py builds them once per weight):
 *   (kind, N, K, w, scales | None, zeros | None, bits, G, gamma)   kind: 0 f32, 1 int-N, 2 ternary, 3 ternary 2-bit,
 *   4 int-N in the 16-row interleaved layout (kernels.h MOTE_INTN_IL16)
 * Buffers are taken C-contiguous and checked against the byte sizes their shapes imply. */

#define MOTE_MAX_BUFS 24

typedef struct {
    Py_buffer b[MOTE_MAX_BUFS];
    int n;
} buf_bag;

/* obj's buffer (writable if asked), of exactly `want` bytes, kept in the bag until bag_release */
static void *bag_take(buf_bag *bag, PyObject *obj, int writable, long long want, const char *name) {
    if (bag->n >= MOTE_MAX_BUFS) {
        PyErr_SetString(PyExc_ValueError, "too many buffers");
        return NULL;
    }
    Py_buffer *b = &bag->b[bag->n];
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s buffer", name, writable ? " writable" : "");
        return NULL;
    }
    bag->n++;
    if (check_len(b, want, name)) return NULL;
    return b->buf;
}

static void bag_release(buf_bag *bag) { release(bag->b, bag->n); }

static int check_range(long long v, long long lo, long long hi, const char *name) {
    if (v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be in %lld..%lld, got %lld", name, lo, hi, v);
        return -1;
    }
    return 0;
}

/* spec tuple -> L; the weight must be [N, K] (N, K >= 1 given by the caller's shapes) */
static int take_linear(buf_bag *bag, PyObject *spec, int N, int K, mote_linear *L, const char *name) {
    PyObject *w, *sc, *zp;
    if (!PyTuple_Check(spec) ||
        !PyArg_ParseTuple(spec, "iiiOOOiif", &L->kind, &L->N, &L->K, &w, &sc, &zp, &L->bits, &L->G, &L->gamma)) {
        PyErr_Format(PyExc_ValueError, "%s: a linear spec is (kind, N, K, w, scales, zeros, bits, G, gamma)", name);
        return -1;
    }
    if (L->N != N || L->K != K) {
        PyErr_Format(PyExc_ValueError, "%s is [%d, %d], expected [%d, %d]", name, L->N, L->K, N, K);
        return -1;
    }
    if (check_dims(1, K, N, 1)) return -1;
    L->scales = L->zeros = NULL;
    switch (L->kind) {
        case MOTE_LIN_F32:
            L->w = bag_take(bag, w, 0, 4LL * N * K, name);
            return L->w ? 0 : -1;
        case MOTE_LIN_TERN:
        case MOTE_LIN_TERN2: {
            const int tpb = L->kind == MOTE_LIN_TERN ? MOTE_TPB_FILE : MOTE_TPB_SLAB2;
            L->w = bag_take(bag, w, 0, (long long)N * (((long long)K + tpb - 1) / tpb), name);
            return L->w ? 0 : -1;
        }
        case MOTE_LIN_INTN16:
            if (!mote_intn_il16_ok(MOTE_INTN_IL16, L->bits, L->G, N)) {
                PyErr_Format(PyExc_ValueError, "%s: the 16-row interleaved int-N layout needs bits 4 or 8, group_size 128 "
                             "and N %% 16 == 0, got bits %d, group_size %d, N %d", name, L->bits, L->G, N);
                return -1;
            }
            /* fall through: the same sizes as the rows layout */
        case MOTE_LIN_INTN: {
            if (L->bits != 2 && L->bits != 3 && L->bits != 4 && L->bits != 8) {
                PyErr_Format(PyExc_ValueError, "%s: bits must be 2, 3, 4 or 8, got %d", name, L->bits);
                return -1;
            }
            if (L->G != 32 && L->G != 64 && L->G != 128) {
                PyErr_Format(PyExc_ValueError, "%s: group_size must be 32, 64 or 128, got %d", name, L->G);
                return -1;
            }
            const long long ng = ((long long)K + L->G - 1) / L->G;
            L->w = bag_take(bag, w, 0, (long long)N * ng * L->G * L->bits / 8, name);
            if (!L->w) return -1;
            L->scales = bag_take(bag, sc, 0, (long long)N * ng * 2, "scales");
            if (!L->scales) return -1;
            L->zeros = bag_take(bag, zp, 0, (long long)N * ng * 2, "zeros");
            return L->zeros ? 0 : -1;
        }
    }
    PyErr_Format(PyExc_ValueError, "%s: unknown linear kind %d (0 f32, 1 int-N, 2 ternary, 3 ternary 2-bit, 4 int-N interleaved by 16)", name,
                 L->kind);
    return -1;
}

/* gemm_f32(W f32[N, K], x f32[T, K], T, K, N, out f32[T, N], threads): out = x W^T (layer.c's f32 GEMM) */
static PyObject *py_gemm_f32(PyObject *self, PyObject *args) {
    Py_buffer b[3] = {{0}};   /* W, x, out */
    int T, K, N, threads = 1, rc = -2;
    if (!PyArg_ParseTuple(args, "y*y*iiiw*|i", &b[0], &b[1], &T, &K, &N, &b[2], &threads)) return NULL;
    if (check_dims(T, K, N, threads) || check_len(&b[0], 4LL * N * K, "W") || check_len(&b[1], 4LL * T * K, "x") ||
        check_len(&b[2], 4LL * T * N, "out"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    mote_gemm_f32(b[0].buf, b[1].buf, T, N, K, b[2].buf, threads);
    Py_END_ALLOW_THREADS
    rc = 0;
done:
    release(b, 3);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

/* The attention half for T positions from `start` (x, h: f32 [T, H]); attn_step and attn_chunk */
static PyObject *attn_call(PyObject *xo, int T, int start, PyObject *ho, PyObject *layer, int threads,
                           const char *start_name) {
    PyObject *ln_in, *ln_post, *qkv, *bq, *bk, *bv, *o, *cos, *sin, *kv, *kv_scales;
    int rc = -2;
    mote_attn_layer L;
    buf_bag bag = {.n = 0};
    if (!PyArg_ParseTuple(layer, "iiiiifOOOOOOOOOiOO", &L.H, &L.n_heads, &L.n_kv, &L.D, &L.context, &L.eps, &ln_in,
                          &ln_post, &qkv, &bq, &bk, &bv, &o, &cos, &sin, &L.kv_bits, &kv, &kv_scales))
        return NULL;
    if (check_range(threads, 1, 256, "threads") || check_range(L.H, 1, MOTE_MAX_DIM, "hidden size") ||
        check_range(L.n_kv, 1, 4096, "kv heads") || check_range(L.n_heads, L.n_kv, 4096, "heads") ||
        check_range(L.D, 2, 4096, "head_dim") || check_range(L.context, 1, MOTE_MAX_DIM, "context") ||
        check_range(T, 1, L.context, "T") || check_range(start, 0, L.context - T, start_name) ||
        check_dims(T, L.H, (L.n_heads + 2 * L.n_kv) * L.D, threads))
        goto done;
    if (L.n_heads % L.n_kv || L.D % 2 || (L.kv_bits != 32 && L.kv_bits != 8)) {
        PyErr_Format(PyExc_ValueError, "heads %d must be a multiple of kv heads %d, head_dim %d even, kv bits 32 or 8",
                     L.n_heads, L.n_kv, L.D);
        goto done;
    }
    const int nq = L.n_heads * L.D, nk = L.n_kv * L.D;
    const long long cells = 2LL * L.n_kv * L.context;   /* (k|v, head, position) */
    float *x = bag_take(&bag, xo, 1, 4LL * T * L.H, "x"), *h = x ? bag_take(&bag, ho, 1, 4LL * T * L.H, "h") : NULL;
    if (!h || !(L.ln_in = bag_take(&bag, ln_in, 0, 4LL * L.H, "ln_in")) ||
        !(L.ln_post = bag_take(&bag, ln_post, 0, 4LL * L.H, "ln_post")) ||
        !(L.bq = bag_take(&bag, bq, 0, 4LL * nq, "bq")) || !(L.bk = bag_take(&bag, bk, 0, 4LL * nk, "bk")) ||
        !(L.bv = bag_take(&bag, bv, 0, 4LL * nk, "bv")) ||
        !(L.cos = bag_take(&bag, cos, 0, 4LL * L.context * L.D, "cos")) ||
        !(L.sin = bag_take(&bag, sin, 0, 4LL * L.context * L.D, "sin")) ||
        !(L.kv = bag_take(&bag, kv, 1, cells * L.D * (L.kv_bits == 32 ? 4 : 1), "kv")))
        goto done;
    L.kv_scales = NULL;
    if (L.kv_bits == 8 && !(L.kv_scales = bag_take(&bag, kv_scales, 1, 4 * cells, "kv_scales"))) goto done;
    if (!PyTuple_Check(qkv) || (PyTuple_GET_SIZE(qkv) != 1 && PyTuple_GET_SIZE(qkv) != 3)) {
        PyErr_SetString(PyExc_ValueError, "qkv must be a tuple of 1 (fused) or 3 linear specs");
        goto done;
    }
    L.nqkv = (int)PyTuple_GET_SIZE(qkv);
    if (L.nqkv == 1 ? take_linear(&bag, PyTuple_GET_ITEM(qkv, 0), nq + 2 * nk, L.H, &L.qkv[0], "qkv")
                    : (take_linear(&bag, PyTuple_GET_ITEM(qkv, 0), nq, L.H, &L.qkv[0], "q") ||
                       take_linear(&bag, PyTuple_GET_ITEM(qkv, 1), nk, L.H, &L.qkv[1], "k") ||
                       take_linear(&bag, PyTuple_GET_ITEM(qkv, 2), nk, L.H, &L.qkv[2], "v")))
        goto done;
    if (take_linear(&bag, o, L.H, nq, &L.o, "o")) goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = mote_attn_chunk(&L, x, T, start, h, threads);
    Py_END_ALLOW_THREADS
    if (rc != 0) PyErr_NoMemory();
done:
    bag_release(&bag);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

/* attn_step(x f32[H] (in/out), pos, h f32[H] (out), layer tuple, threads) */
static PyObject *py_attn_step(PyObject *self, PyObject *args) {
    PyObject *xo, *ho, *layer;
    int pos, threads;
    if (!PyArg_ParseTuple(args, "OiOO!i", &xo, &pos, &ho, &PyTuple_Type, &layer, &threads)) return NULL;
    return attn_call(xo, 1, pos, ho, layer, threads, "pos");
}

/* attn_chunk(x f32[T, H] (in/out), T, start, h f32[T, H] (out), layer tuple, threads) */
static PyObject *py_attn_chunk(PyObject *self, PyObject *args) {
    PyObject *xo, *ho, *layer;
    int T, start, threads;
    if (!PyArg_ParseTuple(args, "OiiOO!i", &xo, &T, &start, &ho, &PyTuple_Type, &layer, &threads)) return NULL;
    return attn_call(xo, T, start, ho, layer, threads, "start");
}

/* The FFN for T rows (h, y: f32 [T, H]; coef: f32 [T], or NULL with one scalar). part 0: y += coef SwiGLU(h)
 * (ffn_step, ffn_chunk); the two halves of a step (T = 1): part 1 (ffn_gate_up) y is act [I] = silu(gate h) up h and
 * down is None; part 2 (ffn_down) h is act [I] and y [H] += coef down(act). */
static PyObject *ffn_call(int part, PyObject *ho, int T, PyObject *yo, PyObject *coefo, float coef1, PyObject *gu,
                          PyObject *down, int threads) {
    int rc = -2, H, I;
    mote_linear G[2], D;
    buf_bag bag = {.n = 0};
    const float *coef = &coef1;
    if (check_range(threads, 1, 256, "threads") || check_range(T, 1, MOTE_MAX_DIM, "T")) goto done;
    const Py_ssize_t ngu = PyTuple_GET_SIZE(gu);
    /* the dims come from down [H, I]; ffn_gate_up takes down None and reads them from gate_up [(2) I, H] */
    PyObject *dims = part == 1 ? (ngu >= 1 ? PyTuple_GET_ITEM(gu, 0) : NULL) : down;
    if ((ngu != 1 && ngu != 2) || (part == 1 && down != Py_None) || !dims || !PyTuple_Check(dims) ||
        PyTuple_GET_SIZE(dims) < 3) {
        PyErr_SetString(PyExc_ValueError, "gate_up must be a tuple of 1 (fused) or 2 linear specs, down a linear spec "
                                          "(None for ffn_gate_up)");
        goto done;
    }
    H = (int)PyLong_AsLong(PyTuple_GET_ITEM(dims, part == 1 ? 2 : 1));
    I = (int)PyLong_AsLong(PyTuple_GET_ITEM(dims, part == 1 ? 1 : 2)) / (part == 1 && ngu == 1 ? 2 : 1);
    if (PyErr_Occurred() || check_range(H, 1, MOTE_MAX_DIM, "down rows") || check_range(I, 1, MOTE_MAX_DIM, "down columns") ||
        check_dims(T, H, 2 * I, threads) || check_dims(T, I, H, threads))
        goto done;
    float *h = bag_take(&bag, ho, 0, 4LL * T * (part == 2 ? I : H), part == 2 ? "act" : "h");
    float *y = h ? bag_take(&bag, yo, 1, 4LL * T * (part == 1 ? I : H), part == 1 ? "act" : "y") : NULL;
    if (!y || (coefo && !(coef = bag_take(&bag, coefo, 0, 4LL * T, "coef"))) ||
        (part != 1 && take_linear(&bag, down, H, I, &D, "down")))
        goto done;
    if (ngu == 1 ? take_linear(&bag, PyTuple_GET_ITEM(gu, 0), 2 * I, H, &G[0], "gate_up")
                 : (take_linear(&bag, PyTuple_GET_ITEM(gu, 0), I, H, &G[0], "gate") ||
                    take_linear(&bag, PyTuple_GET_ITEM(gu, 1), I, H, &G[1], "up")))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = part == 1 ? mote_ffn_gate_up(G, (int)ngu, h, y, threads)
       : part == 2 ? mote_ffn_down(&D, h, *coef, y, threads)
                   : mote_ffn_chunk(G, (int)ngu, &D, h, T, coef, y, threads);
    Py_END_ALLOW_THREADS
    if (rc != 0) PyErr_NoMemory();
done:
    bag_release(&bag);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

/* ffn_step / ffn_gate_up / ffn_down(h, y, coef, gate_up tuple of 1 or 2 specs, down spec or None, threads):
 * part 0 h, y f32[H]; part 1 h f32[H], y = act f32[I]; part 2 h = act f32[I], y f32[H] */
static PyObject *ffn_step_part(PyObject *args, int part) {
    PyObject *ho, *yo, *gu, *down;
    float coef;
    int threads;
    if (!PyArg_ParseTuple(args, "OOfO!Oi", &ho, &yo, &coef, &PyTuple_Type, &gu, &down, &threads)) return NULL;
    return ffn_call(part, ho, 1, yo, NULL, coef, gu, down, threads);
}

static PyObject *py_ffn_step(PyObject *self, PyObject *args) { return ffn_step_part(args, 0); }
static PyObject *py_ffn_gate_up(PyObject *self, PyObject *args) { return ffn_step_part(args, 1); }
static PyObject *py_ffn_down(PyObject *self, PyObject *args) { return ffn_step_part(args, 2); }

/* ffn_chunk(h f32[T, H], T, y f32[T, H] (in/out), coef f32[T], gate_up specs, down spec, threads) */
static PyObject *py_ffn_chunk(PyObject *self, PyObject *args) {
    PyObject *ho, *yo, *coefo, *gu, *down;
    int T, threads;
    if (!PyArg_ParseTuple(args, "OiOOO!Oi", &ho, &T, &yo, &coefo, &PyTuple_Type, &gu, &down, &threads)) return NULL;
    return ffn_call(0, ho, T, yo, coefo, 1.0f, gu, down, threads);
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

/* route(h f32[T, H], T, W f32[E, H], E, k, idx i64[T, k] out, weight f32[T, k] out, threads): MoE routing (route.c) */
static PyObject *py_route(PyObject *self, PyObject *args) {
    Py_buffer b[4] = {{0}};   /* h, W, idx, weight */
    int T, E, k, threads = 1, rc = -2;
    if (!PyArg_ParseTuple(args, "y*iy*iiw*w*|i", &b[0], &T, &b[1], &E, &k, &b[2], &b[3], &threads)) return NULL;
    const long long H = T > 0 ? (long long)b[0].len / 4 / T : 0;
    if (check_range(T, 1, MOTE_MAX_DIM, "T") || check_range(E, 1, 4096, "experts") || check_range(k, 1, E < 64 ? E : 64, "k") ||
        check_range(H, 1, MOTE_MAX_DIM, "hidden size") || check_dims(T, (int)H, E, threads) ||
        check_len(&b[0], 4LL * T * H, "h") || check_len(&b[1], 4LL * E * H, "W") || check_len(&b[2], 8LL * T * k, "idx") ||
        check_len(&b[3], 4LL * T * k, "weight"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = mote_route(b[1].buf, b[0].buf, T, E, (int)H, k, b[2].buf, b[3].buf, threads);
    Py_END_ALLOW_THREADS
    if (rc != 0) PyErr_NoMemory();
done:
    release(b, 4);
    if (rc != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_scratch_held(PyObject *self, PyObject *noargs) {
    return PyLong_FromSize_t(mote_scratch_held());
}

static PyObject *py_scratch_hold(PyObject *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    mote_scratch_hold(on);
    Py_RETURN_NONE;
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
     "intn_matmul(packed, scales f16, zeros f16, bits, group, x f32[T,K], T, K, N, out f32[T,N], threads=1, layout=0)."},
    {"read_sum", py_read_sum, METH_VARARGS, "read_sum(buf, threads=1) -> int: sum of uint64 words (bandwidth probe)."},
    {"attn_step", py_attn_step, METH_VARARGS,
     "attn_step(x f32[H], pos, h f32[H], layer tuple, threads): one decode step's attention half (native/layer.c)."},
    {"ffn_step", py_ffn_step, METH_VARARGS,
     "ffn_step(h f32[H], y f32[H], coef, gate_up specs, down spec, threads): y += coef * SwiGLU(h) (native/layer.c)."},
    {"gemm_f32", py_gemm_f32, METH_VARARGS,
     "gemm_f32(W f32[N,K], x f32[T,K], T, K, N, out f32[T,N], threads=1): out = x W^T on the kernel thread pool."},
    {"attn_chunk", py_attn_chunk, METH_VARARGS,
     "attn_chunk(x f32[T,H], T, start, h f32[T,H], layer tuple, threads): prefill's attention half, causal (native/layer.c)."},
    {"ffn_chunk", py_ffn_chunk, METH_VARARGS,
     "ffn_chunk(h f32[T,H], T, y f32[T,H], coef f32[T], gate_up specs, down spec, threads): y += coef * SwiGLU(h)."},
    {"crc32", py_crc32, METH_VARARGS,
     "crc32(buf, crc=0) -> int: zlib's CRC-32 of buf continuing from crc (GIL released)."},
    {"crc32_path", py_crc32_path, METH_NOARGS, "crc32_path() -> str: 'clmul' or 'scalar' (the CRC-32 path in use)."},
    {"ffn_gate_up", py_ffn_gate_up, METH_VARARGS,
     "ffn_gate_up(h f32[H], act f32[I], coef, gate_up specs, None, threads): act = silu(gate h) * up h (coef unused)."},
    {"ffn_down", py_ffn_down, METH_VARARGS,
     "ffn_down(act f32[I], y f32[H], coef, gate_up specs, down spec, threads): y += coef * down(act)."},
    {"route", py_route, METH_VARARGS,
     "route(h f32[T,H], T, W f32[E,H], E, k, idx i64[T,k], weight f32[T,k], threads=1): MoE top-k routing (native/route.c)."},
    {"scratch_held", py_scratch_held, METH_NOARGS,
     "scratch_held() -> int: bytes of kernel scratch the calling thread keeps between calls (native/scratch.h)."},
    {"scratch_hold", py_scratch_hold, METH_VARARGS,
     "scratch_hold(on): the calling thread keeps its kernel scratch between calls (on) or frees the large blocks (off)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "mote-edge C kernels (ternary and int-N matmuls).", -1,
    native_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
