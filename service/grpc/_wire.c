/*
 * service.grpc._wire: the KServe V2 ModelInfer messages in their plain form, read and written straight
 * from and to protobuf's wire format, without building message objects.
 *
 * decode_infer() reads a ModelInferRequest whose fields are all of the plain form a client such as
 * tritonclient.grpc sends: model_name, model_version, id, inputs (name, datatype, shape), outputs (name)
 * and raw_input_contents, at least one raw entry.  It returns plain Python values, so the checks of
 * service/grpc/protocol.py read lists and strings instead of message wrappers.  Anything else in the
 * message (request, input or output parameters, typed contents, a field this module does not know, a
 * singular field given twice, a wire type that does not match the field, text that is not UTF-8, a
 * truncated or malformed message) makes it return None, and the caller parses the message with protobuf
 * as before: every rule and every message about a request stays written once, in Python.
 *
 * encode_infer() writes a ModelInferResponse from the model's name, version, request id and outputs
 * (name, datatype, shape, raw bytes), byte for byte as protobuf's SerializeToString writes the same
 * message (fields in number order, empty strings left out, shapes packed).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const unsigned char *at;
    const unsigned char *end;
} Reader;

/* 1: read; 0: malformed (more than 10 bytes, or the input ends inside it). */
static int
read_varint(Reader *r, uint64_t *value)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70 && r->at < r->end; shift += 7) {
        unsigned char byte = *r->at++;
        if (shift == 63 && byte > 1) {
            return 0; /* past 64 bits */
        }
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = v;
            return 1;
        }
    }
    return 0;
}

/* A length-delimited field's bytes: 1 read (r moves past them); 0 malformed. */
static int
read_span(Reader *r, Reader *span)
{
    uint64_t length;
    if (!read_varint(r, &length) || length > (uint64_t)(r->end - r->at)) {
        return 0;
    }
    span->at = r->at;
    span->end = r->at + length;
    r->at += length;
    return 1;
}

/* A proto3 string: a new str, or NULL with no error set when it is not UTF-8 (the caller falls back). */
static PyObject *
text(const Reader *span)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)span->at, span->end - span->at, NULL);
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
    }
    return s;
}

/* Field numbers, wire type 2 (length-delimited), as a tag byte. */
#define LEN_TAG(field) (((field) << 3) | 2)

/* An InferInputTensor of the plain form as (name, datatype, [dims]): a new tuple, Py_None (a new
 * reference) when it is not of that form, NULL on a Python error. */
static PyObject *
decode_input(Reader r)
{
    Reader name = {NULL, NULL}, datatype = {NULL, NULL}, span;
    PyObject *shape = PyList_New(0);
    if (shape == NULL) {
        return NULL;
    }
    int shape_seen = 0;
    while (r.at < r.end) {
        uint64_t tag, dim;
        if (!read_varint(&r, &tag)) {
            goto fallback;
        }
        if (tag == LEN_TAG(1) && name.at == NULL) {
            if (!read_span(&r, &name)) {
                goto fallback;
            }
        }
        else if (tag == LEN_TAG(2) && datatype.at == NULL) {
            if (!read_span(&r, &datatype)) {
                goto fallback;
            }
        }
        else if (tag == LEN_TAG(3) && !shape_seen) { /* packed, as every proto3 encoder writes it */
            shape_seen = 1;
            if (!read_span(&r, &span)) {
                goto fallback;
            }
            while (span.at < span.end) {
                if (!read_varint(&span, &dim)) {
                    goto fallback;
                }
                PyObject *value = PyLong_FromLongLong((long long)(int64_t)dim);
                if (value == NULL || PyList_Append(shape, value) < 0) {
                    Py_XDECREF(value);
                    Py_DECREF(shape);
                    return NULL;
                }
                Py_DECREF(value);
            }
        }
        else {
            goto fallback; /* parameters, contents, repeats, anything else */
        }
    }
    PyObject *name_text = name.at ? text(&name) : PyUnicode_New(0, 0);
    if (name_text == NULL) {
        goto error_or_fallback;
    }
    PyObject *datatype_text = datatype.at ? text(&datatype) : PyUnicode_New(0, 0);
    if (datatype_text == NULL) {
        Py_DECREF(name_text);
        goto error_or_fallback;
    }
    return Py_BuildValue("(NNN)", name_text, datatype_text, shape);

error_or_fallback:
    Py_DECREF(shape);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
fallback:
    Py_DECREF(shape);
    Py_RETURN_NONE;
}

/* An InferRequestedOutputTensor of the plain form (a name only): a new str, Py_None when it is not of
 * that form, NULL on a Python error. */
static PyObject *
decode_output(Reader r)
{
    Reader name = {NULL, NULL};
    while (r.at < r.end) {
        uint64_t tag;
        if (!read_varint(&r, &tag) || tag != LEN_TAG(1) || name.at != NULL || !read_span(&r, &name)) {
            Py_RETURN_NONE;
        }
    }
    if (name.at == NULL) {
        return PyUnicode_New(0, 0);
    }
    PyObject *s = text(&name);
    if (s == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    return s;
}

/* Appends one decoded item (a new reference, Py_None when not plain, NULL on a Python error) to list,
 * consuming it: 1 appended, 0 not plain, -1 a Python error. */
static int
append_decoded(PyObject *list, PyObject *item)
{
    if (item == NULL) {
        return -1;
    }
    if (item == Py_None) {
        Py_DECREF(item);
        return 0;
    }
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc < 0 ? -1 : 1;
}

static PyObject *
decode_infer(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Reader r = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
    Reader model = {NULL, NULL}, version = {NULL, NULL}, id = {NULL, NULL}, span;
    PyObject *inputs = PyList_New(0), *outputs = PyList_New(0), *raw = PyList_New(0);
    PyObject *result = NULL, *strings[3] = {NULL, NULL, NULL};
    int rc;
    if (inputs == NULL || outputs == NULL || raw == NULL) {
        goto done;
    }
    while (r.at < r.end) {
        uint64_t tag;
        if (!read_varint(&r, &tag)) {
            goto fallback;
        }
        switch (tag) {
        case LEN_TAG(1):
        case LEN_TAG(2):
        case LEN_TAG(3): {
            Reader *field = tag == LEN_TAG(1) ? &model : tag == LEN_TAG(2) ? &version : &id;
            if (field->at != NULL || !read_span(&r, field)) {
                goto fallback;
            }
            break;
        }
        case LEN_TAG(5): /* the repeated fields: inputs, outputs, raw_input_contents */
        case LEN_TAG(6):
        case LEN_TAG(7): {
            if (!read_span(&r, &span)) {
                goto fallback;
            }
            PyObject *list = tag == LEN_TAG(5) ? inputs : tag == LEN_TAG(6) ? outputs : raw;
            PyObject *item = tag == LEN_TAG(5)   ? decode_input(span)
                             : tag == LEN_TAG(6) ? decode_output(span)
                                                 : PyBytes_FromStringAndSize((const char *)span.at,
                                                                             span.end - span.at);
            if ((rc = append_decoded(list, item)) <= 0) {
                goto fallback_or_error;
            }
            break;
        }
        default:
            goto fallback; /* parameters (4), an unknown field, or a wire type the field does not take */
        }
    }
    if (PyList_GET_SIZE(raw) == 0) {
        goto fallback; /* typed contents, or no data at all: protobuf's path reads those */
    }
    Reader *spans[3] = {&model, &version, &id};
    for (int i = 0; i < 3; i++) {
        strings[i] = spans[i]->at ? text(spans[i]) : PyUnicode_New(0, 0);
        if (strings[i] == NULL) {
            goto fallback_or_error_strings;
        }
    }
    result = Py_BuildValue("(NNNOOO)", strings[0], strings[1], strings[2], inputs, outputs, raw);
    goto done;

fallback_or_error:
    if (rc < 0) {
        goto done;
    }
fallback:
    result = Py_NewRef(Py_None);
    goto done;
fallback_or_error_strings:
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(strings[i]);
    }
    if (!PyErr_Occurred()) {
        result = Py_NewRef(Py_None);
    }
done:
    Py_XDECREF(inputs);
    Py_XDECREF(outputs);
    Py_XDECREF(raw);
    PyBuffer_Release(&view);
    return result;
}

/* ---- encoding -------------------------------------------------------------------------------------- */

static size_t
varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static unsigned char *
put_varint(unsigned char *out, uint64_t v)
{
    while (v >= 0x80) {
        *out++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *out++ = (unsigned char)v;
    return out;
}

/* The size of a length-delimited field holding n bytes (0 for an empty string, which proto3 omits). */
static size_t
string_field_size(Py_ssize_t n)
{
    return n ? 1 + varint_size((uint64_t)n) + (size_t)n : 0;
}

static unsigned char *
put_string_field(unsigned char *out, int field, const char *data, Py_ssize_t n)
{
    if (n == 0) {
        return out;
    }
    *out++ = (unsigned char)LEN_TAG(field);
    out = put_varint(out, (uint64_t)n);
    memcpy(out, data, (size_t)n);
    return out + n;
}

typedef struct {
    const char *name, *datatype, *raw;
    Py_ssize_t name_len, datatype_len, raw_len;
    PyObject *shape;  /* a tuple of ints (borrowed) */
    size_t shape_len; /* bytes of the packed dimensions */
    size_t message;   /* bytes of the InferOutputTensor */
} Output;

static PyObject *
encode_infer(PyObject *module, PyObject *args)
{
    (void)module;
    const char *model, *version, *id;
    Py_ssize_t model_len, version_len, id_len;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "s#s#s#O!:encode_infer", &model, &model_len, &version, &version_len, &id,
                          &id_len, &PyList_Type, &items)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(items);
    Output *outputs = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Output));
    if (outputs == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    size_t total = string_field_size(model_len) + string_field_size(version_len) + string_field_size(id_len);
    for (Py_ssize_t i = 0; i < count; i++) {
        Output *o = &outputs[i];
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) ||
            !PyArg_ParseTuple(item, "s#s#O!y#:output", &o->name, &o->name_len, &o->datatype,
                              &o->datatype_len, &PyTuple_Type, &o->shape, &o->raw, &o->raw_len)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "each output is (name, datatype, shape, raw bytes)");
            }
            goto done;
        }
        for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(o->shape); d++) {
            long long dim = PyLong_AsLongLong(PyTuple_GET_ITEM(o->shape, d));
            if (dim == -1 && PyErr_Occurred()) {
                goto done;
            }
            o->shape_len += varint_size((uint64_t)(int64_t)dim);
        }
        o->message = string_field_size(o->name_len) + string_field_size(o->datatype_len) +
                     (o->shape_len ? 1 + varint_size(o->shape_len) + o->shape_len : 0);
        total += 1 + varint_size(o->message) + o->message;         /* outputs (5) */
        total += 1 + varint_size((uint64_t)o->raw_len) + (size_t)o->raw_len; /* raw_output_contents (6) */
    }
    if (total > PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "the response is too large");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result == NULL) {
        goto done;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    out = put_string_field(out, 1, model, model_len);
    out = put_string_field(out, 2, version, version_len);
    out = put_string_field(out, 3, id, id_len);
    for (Py_ssize_t i = 0; i < count; i++) {
        Output *o = &outputs[i];
        *out++ = (unsigned char)LEN_TAG(5);
        out = put_varint(out, o->message);
        out = put_string_field(out, 1, o->name, o->name_len);
        out = put_string_field(out, 2, o->datatype, o->datatype_len);
        if (o->shape_len) {
            *out++ = (unsigned char)LEN_TAG(3);
            out = put_varint(out, o->shape_len);
            for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(o->shape); d++) {
                out = put_varint(out, (uint64_t)(int64_t)PyLong_AsLongLong(PyTuple_GET_ITEM(o->shape, d)));
            }
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        /* Every raw entry is written, an empty one too: a repeated field keeps its empty items. */
        Output *o = &outputs[i];
        *out++ = (unsigned char)LEN_TAG(6);
        out = put_varint(out, (uint64_t)o->raw_len);
        memcpy(out, o->raw, (size_t)o->raw_len);
        out += o->raw_len;
    }
done:
    PyMem_Free(outputs);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_infer", decode_infer, METH_O,
     "decode_infer(data) -> (model_name, model_version, id, [(name, datatype, [dims])], [output names], "
     "[raw bytes]) for a ModelInferRequest of the plain form, or None"},
    {"encode_infer", encode_infer, METH_VARARGS,
     "encode_infer(model_name, model_version, id, [(name, datatype, shape, raw bytes)]) -> the serialized "
     "ModelInferResponse"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "service.grpc._wire",
    .m_doc = "ModelInfer messages of the plain form, read and written without message objects (see _wire.c).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    return PyModule_Create(&module);
}
