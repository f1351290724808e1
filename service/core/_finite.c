/* service.core._finite: whether a floating-point array holds only finite values, in one pass over its
 * bytes without allocating.
 *
 * numpy's np.isfinite(array).all() allocates a boolean array the size of the input, then reduces it: two
 * ufunc calls per request input, the largest single step of checking a decoded request on the event
 * loop (docs/hotpath.md). Here the check reads each value's exponent bits: a value is NaN or infinite
 * exactly when all of them are set, in IEEE 754 half, single and double precision alike. Reading the
 * bits, not comparing floats, raises no floating-point exception and treats subnormals as the finite
 * numbers they are.
 *
 * all_finite(obj) takes any object with a C-contiguous buffer (a numpy array, bytes, memoryview) whose
 * format is a native-order float ("e", "f" or "d", with an optional '@', '=' or the host's own byte-order
 * prefix) and answers True or False. For anything else (a strided view, another format, the other byte
 * order) it answers None, and the caller asks numpy (service.core.signature.all_finite).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_ORDER '>'
#else
#define HOST_ORDER '<'
#endif

/* Values are checked in blocks: the inner loop has no branch, so the compiler vectorizes it, and a
 * non-finite value ends the scan at the end of its block. */
#define BLOCK 256

#define SCAN(NAME, TYPE, MASK)                                                            \
    static int NAME(const char *data, Py_ssize_t count)                                   \
    {                                                                                     \
        const TYPE mask = (MASK);                                                         \
        Py_ssize_t i = 0;                                                                 \
        while (i < count) {                                                               \
            Py_ssize_t end = count - i < BLOCK ? count : i + BLOCK;                       \
            int bad = 0;                                                                  \
            for (; i < end; i++) {                                                        \
                TYPE bits;                                                                \
                memcpy(&bits, data + i * (Py_ssize_t)sizeof(TYPE), sizeof(TYPE));         \
                bad |= (bits & mask) == mask;                                             \
            }                                                                             \
            if (bad)                                                                      \
                return 0;                                                                 \
        }                                                                                 \
        return 1;                                                                         \
    }

SCAN(finite16, uint16_t, 0x7C00u)
SCAN(finite32, uint32_t, 0x7F800000u)
SCAN(finite64, uint64_t, 0x7FF0000000000000ull)

static PyObject *
all_finite(PyObject *module, PyObject *obj)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear(); /* not contiguous, or no buffer at all: numpy decides */
        Py_RETURN_NONE;
    }
    const char *format = view.format ? view.format : "B";
    if (format[0] == '@' || format[0] == '=' || format[0] == HOST_ORDER)
        format++;
    int finite = -1;
    if (format[0] != '\0' && format[1] == '\0') {
        Py_ssize_t count = view.len / (view.itemsize ? view.itemsize : 1);
        if (format[0] == 'e' && view.itemsize == 2)
            finite = finite16(view.buf, count);
        else if (format[0] == 'f' && view.itemsize == 4)
            finite = finite32(view.buf, count);
        else if (format[0] == 'd' && view.itemsize == 8)
            finite = finite64(view.buf, count);
    }
    PyBuffer_Release(&view);
    if (finite < 0)
        Py_RETURN_NONE;
    return PyBool_FromLong(finite);
}

static PyMethodDef methods[] = {
    {"all_finite", all_finite, METH_O,
     "all_finite(array) -> bool | None\n\nWhether every value of a C-contiguous native-order float16, "
     "float32 or float64 buffer is finite; None for any other buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "service.core._finite",
    "Finite-value checks over a float buffer's bits (see service/core/_finite.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__finite(void)
{
    return PyModule_Create(&module);
}
