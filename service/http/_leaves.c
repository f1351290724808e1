/*
 * service.http._leaves: the numbers of a V2 JSON tensor's "data", as orjson parsed them, packed into the
 * bytes of a float32 or float64 array in one pass.
 *
 * Only the well-formed case is handled here: a flat list of numbers, or lists nested evenly (on each
 * level every item is a list, and all of them have the same length) down to numbers.  A number is an
 * exact int or an exact float: a bool, a string, None, a dict or a ragged nesting makes floats() return
 * None, and the caller's Python check then says which rule the data breaks (service/http/jsontensors.py),
 * so every message stays written once, in Python.  An int beyond any double raises OverflowError, which
 * the caller answers as a value out of range.
 *
 * The values are those numpy's np.asarray(leaves, dtype) gives: a float is cast from its double, an int
 * goes through PyLong_AsDouble (correctly rounded), then, for float32, the same C cast numpy uses.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Deepest nesting walked here (a tensor of more dimensions falls back to Python). */
#define MAX_DEPTH 32

typedef struct {
    char *out;            /* NULL on the first pass, which only checks and counts */
    Py_ssize_t written;   /* values counted (or written) so far */
    int single;           /* float32 (1) or float64 (0) */
    int leaf_depth;       /* the level the numbers are on, once one is seen (-1 before) */
    Py_ssize_t widths[MAX_DEPTH]; /* the length every list on each level must have */
} Walk;

/* 1: written; 0: not well-formed (fall back); -1: a Python error is set. */
static int
walk(Walk *w, PyObject *list, int depth)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n != w->widths[depth]) {
        return 0;
    }
    PyObject *first = PyList_GET_ITEM(list, 0);
    if (PyList_CheckExact(first)) {
        if ((w->leaf_depth >= 0 && depth >= w->leaf_depth) || depth + 1 >= MAX_DEPTH) {
            return 0;
        }
        if (w->widths[depth + 1] < 0) {
            w->widths[depth + 1] = PyList_GET_SIZE(first);
            if (w->widths[depth + 1] == 0) {
                return 0;
            }
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(list, i);
            if (!PyList_CheckExact(item)) {
                return 0;
            }
            int done = walk(w, item, depth + 1);
            if (done != 1) {
                return done;
            }
        }
        return 1;
    }
    if (w->leaf_depth < 0) {
        w->leaf_depth = depth;
    }
    if (depth != w->leaf_depth) {
        return 0;
    }
    if (w->out == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(list, i);
            if (!PyFloat_CheckExact(item) && !PyLong_CheckExact(item)) {
                return 0;
            }
        }
        w->written += n;
        return 1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        double value;
        if (PyFloat_CheckExact(item)) {
            value = PyFloat_AS_DOUBLE(item);
        } else if (PyLong_CheckExact(item)) {
            value = PyLong_AsDouble(item);
            if (value == -1.0 && PyErr_Occurred()) {
                return -1;
            }
        } else {
            return 0;
        }
        if (w->single) {
            ((float *)w->out)[w->written++] = (float)value;
        } else {
            ((double *)w->out)[w->written++] = value;
        }
    }
    return 1;
}

static int
start(Walk *w, PyObject *data)
{
    w->written = 0;
    w->leaf_depth = -1;
    for (int i = 0; i < MAX_DEPTH; i++) {
        w->widths[i] = -1;
    }
    w->widths[0] = PyList_GET_SIZE(data);
    return walk(w, data, 0);
}

PyDoc_STRVAR(floats_doc,
"floats(data, count, single)\n--\n\n"
"The numbers of ``data`` (a list, flat or evenly nested) as the bytes of ``count`` float32 values\n"
"(``single``) or float64 values, in row-major order; None if ``data`` is not exactly that: a leaf that\n"
"is not an int or a float, a ragged nesting, or another number of values than ``count``.");

static PyObject *
floats(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "floats() takes data, count and single");
        return NULL;
    }
    PyObject *data = args[0];
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return NULL;
        }
        PyErr_Clear();  /* a shape of more values than memory holds: not this data's, whatever it is */
        Py_RETURN_NONE;
    }
    int single = PyObject_IsTrue(args[2]);
    if (single < 0) {
        return NULL;
    }
    if (!PyList_CheckExact(data) || count <= 0 || PyList_GET_SIZE(data) == 0) {
        Py_RETURN_NONE;
    }
    /* Two passes: the first checks the nesting and every leaf's type and counts the values, so that
     * nothing is allocated from the shape a client declares before its values are known to be there. */
    Walk w = {.out = NULL, .single = single};
    int done = start(&w, data);
    if (done != 1 || w.written != count) {
        Py_RETURN_NONE;
    }
    Py_ssize_t width = single ? (Py_ssize_t)sizeof(float) : (Py_ssize_t)sizeof(double);
    PyObject *result = PyBytes_FromStringAndSize(NULL, count * width);
    if (result == NULL) {
        return NULL;
    }
    w.out = PyBytes_AS_STRING(result);
    done = start(&w, data);  /* no Python code runs in between: the same walk, now writing */
    if (done != 1) {
        Py_DECREF(result);
        if (done < 0) {  /* an int beyond any double */
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"floats", (PyCFunction)(void (*)(void))floats, METH_FASTCALL, floats_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "service.http._leaves",
    .m_doc = "A V2 JSON tensor's numbers packed into an array's bytes in one pass (see _leaves.c).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__leaves(void)
{
    return PyModuleDef_Init(&module);
}
