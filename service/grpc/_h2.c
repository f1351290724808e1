/*
 * service.grpc._h2: a server-side HTTP/2 session specialised for gRPC, over libnghttp2.
 *
 * Python owns the socket: it feeds the bytes it receives to Session.feed() and writes out what
 * Session.data_to_send() returns.  Everything between (HTTP/2 framing, HPACK, flow control and the
 * gRPC length-prefixed message framing) happens here, so that the event loop only sees whole calls:
 * one HEADERS event per request, one MESSAGE event per gRPC message, one END event per half-close.
 *
 * Per-stream state (a Stream) lives from the request's first HEADERS frame until nghttp2 closes the
 * stream; it is reachable from nghttp2 through the stream user data and from the Session through a
 * linked list, so that dealloc can free what nghttp2_session_del() does not report.
 *
 * nghttp2's automatic WINDOW_UPDATE reopens the flow-control windows as soon as DATA is copied into a
 * stream's message buffer, so flow control alone would let one connection make us hold up to
 * max_concurrent_streams x max_message_bytes of unfinished messages.  The Session therefore counts
 * the bytes of unfinished inbound messages over all its streams (`buffered`, the bytes filled so far,
 * not the lengths declared) against max_buffered_bytes: a DATA chunk that would leave the total above
 * it gets its stream a BUSY event instead, and that stream is then treated like one after TOO_LARGE
 * (its buffer freed, the rest of its request consumed and discarded) except that no END follows.  A
 * stream gives its bytes back when its message completes, when it ends its request, when the server
 * ends its response, when it closes, and when the session stops reading (GOAWAY, fatal error).
 *
 * Nothing here calls back into Python code: every object this module holds or releases is an exact
 * bytes, int, tuple or list, so no __del__ can run from inside an nghttp2 callback and re-enter the
 * session.  The module is not thread-safe; all calls come from one event loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <string.h>

/* Event kinds: the first item of each tuple feed() returns (_h2.pyi lists the tuples).  BUSY is
 * (BUSY, stream id, the connection's total of unfinished-message bytes the refused chunk would have
 * made, which exceeds max_buffered_bytes). */
enum { EV_HEADERS = 1, EV_MESSAGE, EV_END, EV_TOO_LARGE, EV_CLOSED, EV_BUSY, EV_COUNT };

/* A gRPC message's prefix: 1 flag byte (bit 0: compressed), 4 bytes of big-endian length. */
#define PREFIX_LEN 5

/* The largest request header list accepted (names + values + 32 per field, as RFC 9113 counts it),
 * advertised as SETTINGS_MAX_HEADER_LIST_SIZE; a larger one resets the stream.  It bounds what a
 * request can make us hold before Python ever sees it. */
#define MAX_HEADER_LIST 65536

/* The first allocation for a message whose body has not arrived yet; it grows as bytes arrive, so
 * that a prefix declaring a large length costs memory only once the client sends the bytes. */
#define FIRST_CHUNK 65536

/* The least default for max_buffered_bytes (whose default is otherwise 4 * max_message_bytes). */
#define MIN_BUFFERED (1 << 20)

/* data_to_send() keeps its assembly buffer for the next call unless it grew past this. */
#define OUT_KEEP (1 << 20)

/* Direct-mapped caches of the request metadata pairs and paths seen recently: most metadata
 * (content-type, te, user-agent, grpc-accept-encoding) and paths repeat on every call of a
 * connection, and sharing the objects saves three allocations per header per call. */
#define PAIR_SLOTS 64
#define PAIR_MAX_VALUE 64
#define PATH_SLOTS 16

/* Responses queue their messages as bytes objects; most streams send one, which fits inline. */
#define OUTQ_INLINE 2

#define WINDOW_MAX 0x7fffffff

typedef struct Stream {
    struct Stream *prev, *next; /* the Session's list of live streams */
    int32_t id;
    PyObject *py_id; /* the id as an int, shared by all the stream's events */

    /* The request header block, until its HEADERS event takes them. */
    PyObject *method, *path, *metadata;
    size_t header_bytes;

    /* The inbound message being assembled: its prefix while incomplete, then its body. */
    uint8_t prefix[PREFIX_LEN];
    uint8_t prefix_len;
    PyObject *msg;   /* the bytes being filled (allocated size <= msg_size), or NULL */
    size_t msg_size; /* the length the prefix declared */
    size_t msg_fill;
    size_t held; /* what this stream adds to the Session's `buffered`: msg_fill while msg is unfinished */

    /* The response: messages queued for the data provider, and the trailers to follow them. */
    PyObject **outq;
    Py_ssize_t out_head, out_count, out_cap;
    size_t out_pos; /* bytes of outq[out_head] already sent, its prefix included */
    nghttp2_nv *trailers;
    size_t ntrailers;
    PyObject *outq_inline[OUTQ_INLINE];

    unsigned compressed : 1; /* the message being assembled is compressed */
    unsigned too_large : 1;  /* TOO_LARGE was reported: the rest of the request is discarded */
    unsigned dropped : 1;    /* BUSY was reported (or the session ended): the rest of the request is
                              * discarded, and no END follows */
    unsigned announced : 1;  /* its HEADERS event was emitted: Python knows the stream */
    unsigned finished : 1;   /* the server ended its response: nothing more to report or accept */
    unsigned responding : 1; /* response HEADERS submitted with a data provider */
    unsigned ending : 1;     /* finish() was called: EOF (and trailers) once outq drains */
    unsigned deferred : 1;   /* the data provider returned NGHTTP2_ERR_DEFERRED */
    unsigned rst_sent : 1;   /* a RST_STREAM was submitted */
} Stream;

typedef struct {
    PyObject_HEAD
    nghttp2_session *ng;
    Stream *streams;
    Py_ssize_t nstreams;
    uint32_t max_message;
    /* The bytes held in unfinished inbound messages, over all streams (the sum of their `held`), and
     * the most it may reach before a stream is refused with BUSY. */
    uint64_t buffered, max_buffered;
    PyObject *events; /* events not yet returned by feed(), or NULL */

    /* What mem_send produced and data_to_send() has not returned yet. */
    char *out;
    size_t out_len, out_cap;

    int local_goaway; /* the session was terminated by this side, not by a peer's error */
    uint64_t pings_sent, pings_acked; /* this side's PINGs (ping()), and the acknowledgements of them */
    int broken;       /* nghttp2 reported a fatal error: the connection must be dropped */
    PyObject *peer_error; /* why nghttp2 tore the connection down, until feed() raises it */

    PyObject *pair_cache[PAIR_SLOTS];
    PyObject *path_cache[PATH_SLOTS];
} Session;

static PyObject *H2Error;
static PyObject *kind_obj[EV_COUNT];
static PyObject *post_bytes; /* b"POST", the method of every gRPC call */
static nghttp2_session_callbacks *callbacks;

#define NV_STATIC(name, value)                                                                        \
    {                                                                                                 \
        (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, sizeof(value) - 1,                   \
            NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE                              \
    }

static const nghttp2_nv response_headers[] = {
    NV_STATIC(":status", "200"),
    NV_STATIC("content-type", "application/grpc"),
};
#define N_RESPONSE_HEADERS (sizeof(response_headers) / sizeof(response_headers[0]))

/* ------------------------------------------------------------------------------------------------ */
/* Streams */

static Stream *
stream_new(Session *self, int32_t id)
{
    Stream *st = PyMem_Calloc(1, sizeof(Stream));
    if (st == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    st->id = id;
    st->py_id = PyLong_FromLong(id);
    st->metadata = PyList_New(0);
    if (st->py_id == NULL || st->metadata == NULL) {
        Py_XDECREF(st->py_id);
        Py_XDECREF(st->metadata);
        PyMem_Free(st);
        return NULL;
    }
    st->outq = st->outq_inline;
    st->out_cap = OUTQ_INLINE;
    st->next = self->streams;
    if (self->streams != NULL)
        self->streams->prev = st;
    self->streams = st;
    self->nstreams++;
    return st;
}

static void
stream_free(Session *self, Stream *st)
{
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        self->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    self->nstreams--;
    self->buffered -= st->held;

    Py_DECREF(st->py_id);
    Py_XDECREF(st->method);
    Py_XDECREF(st->path);
    Py_XDECREF(st->metadata);
    Py_XDECREF(st->msg);
    for (Py_ssize_t i = 0; i < st->out_count; i++)
        Py_DECREF(st->outq[st->out_head + i]);
    if (st->outq != st->outq_inline)
        PyMem_Free(st->outq);
    PyMem_Free(st->trailers);
    PyMem_Free(st);
}

/* Frees the stream's unfinished inbound message, giving its bytes back to the Session's total. */
static void
release(Session *self, Stream *st)
{
    self->buffered -= st->held;
    st->held = 0;
    Py_CLEAR(st->msg);
    st->prefix_len = 0;
}

/* The server ended its response: the rest of the request will not be read, so its buffer goes now. */
static void
mark_finished(Session *self, Stream *st)
{
    st->finished = 1;
    release(self, st);
}

/* Once the session reads no more (its final GOAWAY went out, or it broke), no message it holds can
 * complete: their buffers go at once rather than with the Session.  nghttp2_session_mem_recv() ignores
 * all input from then on, and `dropped` would discard any that came. */
static void
release_if_done(Session *self)
{
    if (!self->broken && nghttp2_session_want_read(self->ng))
        return;
    for (Stream *st = self->streams; st != NULL; st = st->next) {
        release(self, st);
        st->dropped = 1;
    }
}

/* The stream Python may still respond on: known to it, and not yet ended by the server. */
static Stream *
live_stream(Session *self, int32_t id)
{
    Stream *st = id > 0 ? nghttp2_session_get_stream_user_data(self->ng, id) : NULL;
    return st != NULL && st->announced && !st->finished ? st : NULL;
}

/* ------------------------------------------------------------------------------------------------ */
/* Events */

/* Appends (kind, stream id, *fields) to the pending events.  Steals the references in fields, which
 * may be NULL when building one failed (the error is then set and -1 returned). */
static int
emit(Session *self, int kind, Stream *st, Py_ssize_t nfields, PyObject **fields)
{
    PyObject *event = NULL;
    Py_ssize_t i;

    for (i = 0; i < nfields; i++)
        if (fields[i] == NULL)
            goto fail;
    if (self->events == NULL && (self->events = PyList_New(0)) == NULL)
        goto fail;
    event = PyTuple_New(2 + nfields);
    if (event == NULL)
        goto fail;
    PyTuple_SET_ITEM(event, 0, Py_NewRef(kind_obj[kind]));
    PyTuple_SET_ITEM(event, 1, Py_NewRef(st->py_id));
    for (i = 0; i < nfields; i++)
        PyTuple_SET_ITEM(event, 2 + i, fields[i]);
    i = PyList_Append(self->events, event);
    Py_DECREF(event);
    return (int)i;

fail:
    for (i = 0; i < nfields; i++)
        Py_XDECREF(fields[i]);
    return -1;
}

static PyObject *
take_events(Session *self)
{
    PyObject *events = self->events;
    self->events = NULL;
    return events != NULL ? events : PyList_New(0);
}

/* ------------------------------------------------------------------------------------------------ */
/* Request headers */

static PyObject *
cached_path(Session *self, const uint8_t *value, size_t len)
{
    size_t slot = (len * 31 + (len ? value[len - 1] + value[len / 2] : 0)) % PATH_SLOTS;
    PyObject *path = self->path_cache[slot];

    if (path != NULL && (size_t)PyBytes_GET_SIZE(path) == len && memcmp(PyBytes_AS_STRING(path), value, len) == 0)
        return Py_NewRef(path);
    path = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)len);
    if (path != NULL)
        Py_XSETREF(self->path_cache[slot], Py_NewRef(path));
    return path;
}

static PyObject *
cached_pair(Session *self, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen)
{
    size_t slot = (nlen * 131 + vlen * 31 + (nlen ? name[nlen - 1] : 0) + (vlen ? value[0] + value[vlen - 1] : 0))
                  % PAIR_SLOTS;
    PyObject *pair = self->pair_cache[slot];

    if (pair != NULL) {
        PyObject *n = PyTuple_GET_ITEM(pair, 0), *v = PyTuple_GET_ITEM(pair, 1);
        if ((size_t)PyBytes_GET_SIZE(n) == nlen && (size_t)PyBytes_GET_SIZE(v) == vlen
            && memcmp(PyBytes_AS_STRING(n), name, nlen) == 0 && memcmp(PyBytes_AS_STRING(v), value, vlen) == 0)
            return Py_NewRef(pair);
    }
    pair = PyTuple_New(2);
    if (pair == NULL)
        return NULL;
    PyObject *n = PyBytes_FromStringAndSize((const char *)name, (Py_ssize_t)nlen);
    PyObject *v = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)vlen);
    PyTuple_SET_ITEM(pair, 0, n);
    PyTuple_SET_ITEM(pair, 1, v);
    if (n == NULL || v == NULL) {
        Py_DECREF(pair);
        return NULL;
    }
    /* Long values (trace ids, deadlines) seldom repeat: caching them would only evict those that do. */
    if (vlen <= PAIR_MAX_VALUE)
        Py_XSETREF(self->pair_cache[slot], Py_NewRef(pair));
    return pair;
}

static int
on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    Session *self = user_data;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    Stream *st = stream_new(self, frame->hd.stream_id);
    if (st == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (nghttp2_session_set_stream_user_data(ng, st->id, st) != 0) {
        stream_free(self, st);
        PyErr_SetString(PyExc_SystemError, "nghttp2 lost a stream it just opened");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int
on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
          const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    Session *self = user_data;
    PyObject *obj;
    (void)flags;

    /* Only the request's own header block: gRPC clients send no trailers, and any they send carry
     * nothing a server needs. */
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    Stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    st->header_bytes += namelen + valuelen + 32;
    if (st->header_bytes > MAX_HEADER_LIST)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */

    if (namelen > 0 && name[0] == ':') {
        if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
            obj = valuelen == 4 && memcmp(value, "POST", 4) == 0
                      ? Py_NewRef(post_bytes)
                      : PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)valuelen);
            Py_XSETREF(st->method, obj);
        }
        else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
            obj = cached_path(self, value, valuelen);
            Py_XSETREF(st->path, obj);
        }
        else {
            return 0;
        }
        return obj != NULL ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    obj = cached_pair(self, name, namelen, value, valuelen);
    if (obj == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    int rc = PyList_Append(st->metadata, obj);
    Py_DECREF(obj);
    return rc == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* ------------------------------------------------------------------------------------------------ */
/* Request messages */

/* Splits DATA payload into gRPC messages; each complete one becomes a MESSAGE event. */
static int
take_data(Session *self, Stream *st, const uint8_t *data, size_t len)
{
    while (len > 0) {
        size_t take;

        if (st->msg == NULL) {
            take = PREFIX_LEN - st->prefix_len;
            if (take > len)
                take = len;
            memcpy(st->prefix + st->prefix_len, data, take);
            st->prefix_len += (uint8_t)take;
            data += take;
            len -= take;
            if (st->prefix_len < PREFIX_LEN)
                return 0;
            st->prefix_len = 0;

            uint32_t size = (uint32_t)st->prefix[1] << 24 | (uint32_t)st->prefix[2] << 16
                            | (uint32_t)st->prefix[3] << 8 | st->prefix[4];
            if (size > self->max_message) {
                st->too_large = 1;
                PyObject *fields[] = {PyLong_FromUnsignedLong(size)};
                return emit(self, EV_TOO_LARGE, st, 1, fields);
            }
            st->compressed = st->prefix[0] & 1;
            st->msg_size = size;
            st->msg_fill = 0;
        }

        take = st->msg_size - st->msg_fill;
        if (take > len)
            take = len;
        if (st->msg_fill + take < st->msg_size && self->buffered + take > self->max_buffered) {
            /* The message stays unfinished past this chunk, and the connection cannot hold its bytes
             * too: the stream gives up its buffer and the rest of its request, the others go on. */
            uint64_t would = self->buffered + take;
            release(self, st);
            st->dropped = 1;
            PyObject *fields[] = {PyLong_FromUnsignedLongLong(would)};
            return emit(self, EV_BUSY, st, 1, fields);
        }
        if (st->msg == NULL) {
            /* Sized for what has arrived rather than for what the prefix claims (see FIRST_CHUNK);
             * a message within this chunk gets its exact size at once. */
            size_t first = len > FIRST_CHUNK ? len : FIRST_CHUNK;
            st->msg = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(st->msg_size < first ? st->msg_size : first));
            if (st->msg == NULL)
                return -1;
        }
        size_t cap = (size_t)PyBytes_GET_SIZE(st->msg);
        if (st->msg_fill + take > cap) {
            size_t want = cap * 2 > st->msg_fill + take ? cap * 2 : st->msg_fill + take;
            if (want > st->msg_size)
                want = st->msg_size;
            if (_PyBytes_Resize(&st->msg, (Py_ssize_t)want) < 0)
                return -1;
        }
        memcpy(PyBytes_AS_STRING(st->msg) + st->msg_fill, data, take);
        st->msg_fill += take;
        data += take;
        len -= take;
        if (st->msg_fill == st->msg_size) {
            PyObject *fields[] = {st->msg, PyBool_FromLong(st->compressed)};
            st->msg = NULL;
            self->buffered -= st->held;
            st->held = 0;
            if (emit(self, EV_MESSAGE, st, 2, fields) < 0)
                return -1;
        }
        else {
            st->held += take;
            self->buffered += take;
        }
    }
    return 0;
}

static int
on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                   void *user_data)
{
    (void)flags;
    Stream *st = nghttp2_session_get_stream_user_data(ng, stream_id);

    /* Discarded data still counts as consumed: nghttp2's automatic WINDOW_UPDATE reopens the windows. */
    if (st == NULL || !st->announced || st->finished || st->too_large || st->dropped)
        return 0;
    return take_data(user_data, st, data, len) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int
end_request(Session *self, Stream *st)
{
    int truncated = !st->too_large && (st->prefix_len > 0 || st->msg != NULL);
    release(self, st);
    PyObject *fields[] = {PyBool_FromLong(truncated)};
    return emit(self, EV_END, st, 1, fields);
}

/* The opaque data of this side's PINGs: an acknowledgement carries it back. */
static const uint8_t PING_OPAQUE[8] = {'d', 'r', 'a', 'i', 'n', 'i', 'n', 'g'};

static int
on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    Session *self = user_data;

    if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) &&
        memcmp(frame->ping.opaque_data, PING_OPAQUE, sizeof PING_OPAQUE) == 0 && self->pings_acked < self->pings_sent)
        self->pings_acked++;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    Stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL || st->finished)
        return 0;

    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        PyObject *fields[] = {
            st->method != NULL ? st->method : PyBytes_FromStringAndSize(NULL, 0),
            st->path != NULL ? st->path : PyBytes_FromStringAndSize(NULL, 0),
            st->metadata,
        };
        st->method = st->path = st->metadata = NULL;
        st->announced = 1;
        if (emit(self, EV_HEADERS, st, 3, fields) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && st->announced && !st->dropped && end_request(self, st) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int
on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code, void *user_data)
{
    Session *self = user_data;
    Stream *st = nghttp2_session_get_stream_user_data(ng, stream_id);
    int rc = 0;

    if (st == NULL)
        return 0;
    if (st->announced && !st->finished) {
        PyObject *fields[] = {PyLong_FromUnsignedLong(error_code)};
        rc = emit(self, EV_CLOSED, st, 1, fields);
    }
    nghttp2_session_set_stream_user_data(ng, stream_id, NULL);
    stream_free(self, st);
    return rc == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int
on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    Session *self = user_data;

    if (frame->hd.type == NGHTTP2_GOAWAY) {
        /* nghttp2 answers a peer's connection error with a GOAWAY of its own: this is how feed()
         * learns of errors mem_recv does not return (it reports only fatal ones). */
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR && !self->local_goaway && self->peer_error == NULL) {
            /* The debug data nghttp2 sets is its reason, not NUL-terminated. */
            PyObject *reason = PyUnicode_DecodeLatin1((const char *)frame->goaway.opaque_data,
                                                      (Py_ssize_t)frame->goaway.opaque_data_len, NULL);
            if (reason == NULL)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            self->peer_error = PyUnicode_FromFormat("%s: %U", nghttp2_http2_strerror(frame->goaway.error_code),
                                                    reason);
            Py_DECREF(reason);
            if (self->peer_error == NULL)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        return 0;
    }
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA)
        && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        && nghttp2_session_get_stream_remote_close(ng, frame->hd.stream_id) == 0) {
        /* The response is complete while the client is still sending: RFC 9113 8.1 lets the server
         * stop it with RST_STREAM(NO_ERROR), as gRPC servers do, instead of reading a request nobody
         * will look at. */
        Stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (st != NULL)
            st->rst_sent = 1;
        if (nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR) != 0) {
            PyErr_NoMemory();
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Responses */

static ssize_t
read_response(nghttp2_session *ng, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
              nghttp2_data_source *source, void *user_data)
{
    Stream *st = source->ptr;
    size_t n = 0;
    (void)user_data;

    while (n < length && st->out_count > 0) {
        PyObject *msg = st->outq[st->out_head];
        size_t size = (size_t)PyBytes_GET_SIZE(msg), take;

        if (st->out_pos < PREFIX_LEN) {
            const uint8_t prefix[PREFIX_LEN] = {0, (uint8_t)(size >> 24), (uint8_t)(size >> 16),
                                                (uint8_t)(size >> 8), (uint8_t)size};
            take = PREFIX_LEN - st->out_pos;
            if (take > length - n)
                take = length - n;
            memcpy(buf + n, prefix + st->out_pos, take);
            n += take;
            st->out_pos += take;
            if (st->out_pos < PREFIX_LEN)
                break;
        }
        size_t sent = st->out_pos - PREFIX_LEN;
        take = size - sent;
        if (take > length - n)
            take = length - n;
        memcpy(buf + n, PyBytes_AS_STRING(msg) + sent, take);
        n += take;
        st->out_pos += take;
        if (sent + take == size) {
            Py_DECREF(msg);
            st->out_pos = 0;
            st->out_head++;
            if (--st->out_count == 0)
                st->out_head = 0;
        }
    }

    if (st->out_count == 0) {
        if (st->ending) {
            *data_flags |= NGHTTP2_DATA_FLAG_EOF;
            if (st->ntrailers > 0) {
                *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                int rv = nghttp2_submit_trailer(ng, stream_id, st->trailers + N_RESPONSE_HEADERS, st->ntrailers);
                PyMem_Free(st->trailers);
                st->trailers = NULL;
                st->ntrailers = 0;
                if (rv != 0)
                    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */
            }
        }
        else if (n == 0) {
            st->deferred = 1;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    return (ssize_t)n;
}

/* Copies a list of (bytes, bytes) trailers into one block: nghttp2_nv[N_RESPONSE_HEADERS + n], the
 * response headers first (for a trailers-only response; a response that sends HEADERS of its own skips
 * them), followed by the names and values the entries point to.  The copy makes the block safe to keep
 * until read_response submits it.  Returns NULL with an error set when `pairs` is no such list. */
static nghttp2_nv *
build_trailers(PyObject *pairs, size_t *count)
{
    PyObject *seq = PySequence_Fast(pairs, "trailers must be a list of (bytes, bytes) tuples");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    size_t text = 0;

    for (i = 0; i < n; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))
            || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "trailers must be a list of (bytes, bytes) tuples");
            Py_DECREF(seq);
            return NULL;
        }
        text += (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0))
                + (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1));
    }

    size_t total = N_RESPONSE_HEADERS + (size_t)n;
    nghttp2_nv *nv = PyMem_Malloc(total * sizeof(nghttp2_nv) + text + 1);
    if (nv == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(nv, response_headers, sizeof(response_headers));
    uint8_t *p = (uint8_t *)(nv + total);
    for (i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(items[i], 0), *value = PyTuple_GET_ITEM(items[i], 1);
        nghttp2_nv *e = &nv[N_RESPONSE_HEADERS + (size_t)i];
        e->namelen = (size_t)PyBytes_GET_SIZE(name);
        e->valuelen = (size_t)PyBytes_GET_SIZE(value);
        e->name = p;
        memcpy(p, PyBytes_AS_STRING(name), e->namelen);
        p += e->namelen;
        e->value = p;
        memcpy(p, PyBytes_AS_STRING(value), e->valuelen);
        p += e->valuelen;
        e->flags = NGHTTP2_NV_FLAG_NONE;
    }
    Py_DECREF(seq);
    *count = (size_t)n;
    return nv;
}

/* A payload argument as the exact bytes object the response queue keeps: releasing an exact bytes
 * cannot run Python code from inside nghttp2, as a subclass's __del__ could. */
static PyObject *
message_arg(PyObject *payload)
{
    PyObject *msg = PyBytes_CheckExact(payload) ? Py_NewRef(payload) : PyBytes_FromObject(payload);
    if (msg != NULL && (size_t)PyBytes_GET_SIZE(msg) > UINT32_MAX) {
        Py_DECREF(msg);
        PyErr_SetString(PyExc_ValueError, "a gRPC message is at most 4 GiB - 1");
        return NULL;
    }
    return msg;
}

static int
submit_error(int rv)
{
    if (rv == NGHTTP2_ERR_NOMEM)
        PyErr_NoMemory();
    else
        PyErr_Format(H2Error, "nghttp2: %s", nghttp2_strerror(rv));
    return -1;
}

static int
start_response(Session *self, Stream *st)
{
    nghttp2_data_provider provider;

    provider.source.ptr = st;
    provider.read_callback = read_response;
    int rv = nghttp2_submit_response(self->ng, st->id, response_headers, N_RESPONSE_HEADERS, &provider);
    if (rv != 0)
        return submit_error(rv);
    st->responding = 1;
    return 0;
}

static void
resume(Session *self, Stream *st)
{
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(self->ng, st->id);
    }
}

/* Queues msg (a reference it steals, from message_arg) for the stream's data provider. */
static int
queue_message(Session *self, Stream *st, PyObject *msg)
{
    if (!st->responding && start_response(self, st) < 0) {
        Py_DECREF(msg);
        return -1;
    }
    if (st->out_head + st->out_count == st->out_cap) {
        if (st->out_head > 0) {
            memmove(st->outq, st->outq + st->out_head, (size_t)st->out_count * sizeof(PyObject *));
            st->out_head = 0;
        }
        else {
            Py_ssize_t cap = st->out_cap * 2;
            PyObject **q = PyMem_Malloc((size_t)cap * sizeof(PyObject *));
            if (q == NULL) {
                Py_DECREF(msg);
                PyErr_NoMemory();
                return -1;
            }
            memcpy(q, st->outq, (size_t)st->out_count * sizeof(PyObject *));
            if (st->outq != st->outq_inline)
                PyMem_Free(st->outq);
            st->outq = q;
            st->out_cap = cap;
        }
    }
    st->outq[st->out_head + st->out_count++] = msg;
    resume(self, st);
    return 0;
}

/* Ends the response with the trailers from build_trailers (a block it takes over): a trailers-only
 * HEADERS frame if no HEADERS went yet, otherwise read_response's to send once the messages are out. */
static int
finish_response(Session *self, Stream *st, nghttp2_nv *nv, size_t n)
{
    if (st->responding) {
        st->trailers = nv;
        st->ntrailers = n;
        st->ending = 1;
        mark_finished(self, st);
        resume(self, st);
        return 0;
    }
    /* nghttp2 copies the header block at once. */
    int rv = nghttp2_submit_response(self->ng, st->id, nv, N_RESPONSE_HEADERS + n, NULL);
    PyMem_Free(nv);
    if (rv != 0)
        return submit_error(rv);
    mark_finished(self, st);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Arguments */

/* Unpacks the arguments of a METH_FASTCALL | METH_KEYWORDS method into out[], in the order of the
 * NULL-terminated names; the first `required` must be given, omitted ones are left NULL. */
static int
unpack(const char *func, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
       Py_ssize_t required, PyObject **out)
{
    Py_ssize_t total = 0, i, j;

    while (names[total] != NULL)
        total++;
    if (nargs > total) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", func, total, nargs);
        return -1;
    }
    for (i = 0; i < total; i++)
        out[i] = i < nargs ? args[i] : NULL;
    if (kwnames != NULL) {
        for (i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            for (j = 0; j < total; j++)
                if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0)
                    break;
            if (j == total) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", func, key);
                return -1;
            }
            if (out[j] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", func, names[j]);
                return -1;
            }
            out[j] = args[nargs + i];
        }
    }
    for (i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", func, names[i]);
            return -1;
        }
    }
    return 0;
}

/* A stream id argument; one outside 1..2^31-1 names no stream, which the methods ignore like any
 * other unknown one. */
static int
stream_id_arg(PyObject *obj, int32_t *id)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);

    if (v == -1 && PyErr_Occurred())
        return -1;
    *id = overflow == 0 && v > 0 && v <= INT32_MAX ? (int32_t)v : 0;
    return 0;
}

static int
error_code_arg(PyObject *obj, uint32_t dflt, uint32_t *code)
{
    if (obj == NULL) {
        *code = dflt;
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "an HTTP/2 error code is at most 2**32 - 1");
        return -1;
    }
    *code = (uint32_t)v;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Output */

/* Moves everything nghttp2 can send now into self->out. */
static int
drain_output(Session *self)
{
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(self->ng, &data);

        if (n == 0)
            return 0;
        if (n < 0) {
            self->broken = 1;
            if (!PyErr_Occurred())
                PyErr_Format(H2Error, "nghttp2: %s", nghttp2_strerror((int)n));
            return -1;
        }
        if (self->out_len + (size_t)n > self->out_cap) {
            size_t cap = self->out_cap ? self->out_cap * 2 : 16384;
            while (cap < self->out_len + (size_t)n)
                cap *= 2;
            char *out = PyMem_Realloc(self->out, cap);
            if (out == NULL) {
                /* nghttp2 considers these bytes sent: the connection cannot go on without them. */
                self->broken = 1;
                PyErr_NoMemory();
                return -1;
            }
            self->out = out;
            self->out_cap = cap;
        }
        memcpy(self->out + self->out_len, data, (size_t)n);
        self->out_len += (size_t)n;
    }
}

/* drain_output(), then what sending changed: once the GOAWAY that ends the session is out (nghttp2 reads
 * nothing more then) or the session broke, the messages still unfinished are freed. */
static int
drain(Session *self)
{
    int rc = drain_output(self);
    release_if_done(self);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ */
/* Session */

static void
Session_dealloc(Session *self)
{
    /* nghttp2_session_del() reports no stream closes: the streams still open are freed here. */
    if (self->ng != NULL)
        nghttp2_session_del(self->ng);
    while (self->streams != NULL)
        stream_free(self, self->streams);
    Py_XDECREF(self->events);
    Py_XDECREF(self->peer_error);
    for (int i = 0; i < PAIR_SLOTS; i++)
        Py_XDECREF(self->pair_cache[i]);
    for (int i = 0; i < PATH_SLOTS; i++)
        Py_XDECREF(self->path_cache[i]);
    PyMem_Free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Session_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"max_message_bytes", "max_concurrent_streams", "window_bytes", "max_buffered_bytes",
                             NULL};
    long long max_message, max_streams = 1024, window = 16 * 1024 * 1024, max_buffered = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "L|LLL:Session", kwlist, &max_message, &max_streams, &window,
                                     &max_buffered))
        return NULL;
    if (max_message < 0 || max_streams < 0 || window < 0 || max_buffered < 0) {
        PyErr_SetString(PyExc_ValueError, "Session() arguments must not be negative");
        return NULL;
    }
    if (window > WINDOW_MAX)
        window = WINDOW_MAX;
    if (max_streams > UINT32_MAX)
        max_streams = UINT32_MAX;

    Session *self = (Session *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* A prefix cannot declare more than 2^32 - 1 bytes, so a larger limit is no limit. */
    self->max_message = max_message > UINT32_MAX ? UINT32_MAX : (uint32_t)max_message;
    if (max_buffered == 0) {
        max_buffered = 4 * (long long)self->max_message;
        if (max_buffered < MIN_BUFFERED)
            max_buffered = MIN_BUFFERED;
    }
    self->max_buffered = (uint64_t)max_buffered;

    int rv = nghttp2_session_server_new(&self->ng, callbacks, self);
    if (rv != 0) {
        self->ng = NULL;
        Py_DECREF(self);
        submit_error(rv);
        return NULL;
    }
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST},
    };
    rv = nghttp2_submit_settings(self->ng, NGHTTP2_FLAG_NONE, settings, sizeof(settings) / sizeof(settings[0]));
    if (rv == 0)
        rv = nghttp2_session_set_local_window_size(self->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)window);
    if (rv != 0) {
        Py_DECREF(self);
        submit_error(rv);
        return NULL;
    }
    return (PyObject *)self;
}

/* A fatal error from mem_recv: queue a GOAWAY for data_to_send() (nghttp2 queues none for a bad
 * preface) and raise the callback's Python error, or H2Error. */
static PyObject *
fail_connection(Session *self, int rv)
{
    PyObject *type, *value, *tb;

    PyErr_Fetch(&type, &value, &tb);
    self->local_goaway = 1;
    nghttp2_session_terminate_session(
        self->ng, rv == NGHTTP2_ERR_CALLBACK_FAILURE ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_PROTOCOL_ERROR);
    if (drain(self) < 0)
        PyErr_Clear();
    Py_CLEAR(self->events);
    if (type != NULL)
        PyErr_Restore(type, value, tb);
    else
        PyErr_Format(H2Error, "%s", nghttp2_strerror(rv));
    return NULL;
}

static PyObject *
Session_feed(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"data", NULL};
    PyObject *data;
    Py_buffer view;
    ssize_t rv;

    if (unpack("feed", args, nargs, kwnames, names, 1, &data) < 0)
        return NULL;
    if (self->broken) {
        PyErr_SetString(H2Error, "the HTTP/2 session failed earlier; drop the connection");
        return NULL;
    }
    if (PyBytes_CheckExact(data)) {
        rv = nghttp2_session_mem_recv(self->ng, (const uint8_t *)PyBytes_AS_STRING(data),
                                      (size_t)PyBytes_GET_SIZE(data));
    }
    else {
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        rv = nghttp2_session_mem_recv(self->ng, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
    }
    if (rv < 0)
        return fail_connection(self, (int)rv);
    /* Sending now what the input asked for (SETTINGS ACK, WINDOW_UPDATE, PING ACK, RST_STREAM, or the
     * GOAWAY of a connection error) lets on_frame_send see a GOAWAY nghttp2 queued for a peer's error,
     * and closes the streams it reset while their events can still join this call's. */
    if (drain(self) < 0)
        return NULL;
    if (self->peer_error != NULL) {
        PyErr_SetObject(H2Error, self->peer_error);
        Py_CLEAR(self->peer_error);
        Py_CLEAR(self->events);
        return NULL;
    }
    return take_events(self);
}

static PyObject *
Session_data_to_send(Session *self, PyObject *Py_UNUSED(ignored))
{
    /* A broken session's output may lack frames nghttp2 counts as sent: better none than a corrupt
     * stream.  want_read() and want_write() are False by now, so the caller closes. */
    if (self->broken)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (drain(self) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(self->out, (Py_ssize_t)self->out_len);
    if (out == NULL)
        return NULL;
    self->out_len = 0;
    if (self->out_cap > OUT_KEEP) {
        PyMem_Free(self->out);
        self->out = NULL;
        self->out_cap = 0;
    }
    return out;
}

static PyObject *
Session_want_read(Session *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(!self->broken && nghttp2_session_want_read(self->ng));
}

static PyObject *
Session_want_write(Session *self, PyObject *Py_UNUSED(ignored))
{
    /* feed() may have moved frames into self->out already: they still have to be written. */
    return PyBool_FromLong(!self->broken && (self->out_len > 0 || nghttp2_session_want_write(self->ng)));
}

/* The methods below convert their arguments, which may run Python code (__index__, __iter__, the
 * buffer protocol), before they look the stream up: code that fed the session meanwhile could have
 * closed it. */

static PyObject *
Session_send_headers(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"stream_id", NULL};
    PyObject *a[1];
    int32_t id;

    if (unpack("send_headers", args, nargs, kwnames, names, 1, a) < 0 || stream_id_arg(a[0], &id) < 0)
        return NULL;
    Stream *st = live_stream(self, id);
    if (st != NULL && !st->responding && start_response(self, st) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Session_send_message(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"stream_id", "payload", NULL};
    PyObject *a[2], *msg;
    int32_t id;

    if (unpack("send_message", args, nargs, kwnames, names, 2, a) < 0 || stream_id_arg(a[0], &id) < 0
        || (msg = message_arg(a[1])) == NULL)
        return NULL;
    Stream *st = live_stream(self, id);
    if (st == NULL)
        Py_DECREF(msg);
    else if (queue_message(self, st, msg) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Session_finish(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"stream_id", "trailers", NULL};
    PyObject *a[2];
    nghttp2_nv *nv;
    size_t n;
    int32_t id;

    if (unpack("finish", args, nargs, kwnames, names, 2, a) < 0 || stream_id_arg(a[0], &id) < 0
        || (nv = build_trailers(a[1], &n)) == NULL)
        return NULL;
    Stream *st = live_stream(self, id);
    if (st == NULL)
        PyMem_Free(nv);
    else if (finish_response(self, st, nv, n) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Session_unary(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"stream_id", "payload", "trailers", NULL};
    PyObject *a[3], *msg;
    nghttp2_nv *nv;
    size_t n;
    int32_t id;

    if (unpack("unary", args, nargs, kwnames, names, 3, a) < 0 || stream_id_arg(a[0], &id) < 0
        || (nv = build_trailers(a[2], &n)) == NULL)
        return NULL;
    if ((msg = message_arg(a[1])) == NULL) {
        PyMem_Free(nv);
        return NULL;
    }
    Stream *st = live_stream(self, id);
    if (st == NULL) {
        Py_DECREF(msg);
        PyMem_Free(nv);
        Py_RETURN_NONE;
    }
    if (queue_message(self, st, msg) < 0) {
        PyMem_Free(nv);
        return NULL;
    }
    /* With HEADERS submitted by queue_message, this cannot fail: the trailers wait for the message. */
    finish_response(self, st, nv, n);
    Py_RETURN_NONE;
}

static PyObject *
Session_reject(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"stream_id", "http_status", NULL};
    PyObject *a[2];
    int32_t id;
    int rv;

    if (unpack("reject", args, nargs, kwnames, names, 2, a) < 0 || stream_id_arg(a[0], &id) < 0)
        return NULL;
    long status = PyLong_AsLong(a[1]);
    if (status == -1 && PyErr_Occurred())
        return NULL;
    if (status < 200 || status > 599) {
        PyErr_SetString(PyExc_ValueError, "http_status must be a final status, 200 to 599");
        return NULL;
    }
    Stream *st = live_stream(self, id);
    if (st == NULL)
        Py_RETURN_NONE;
    if (st->responding) {
        /* A second :status cannot follow the first: end the stream the only way left. */
        rv = nghttp2_submit_rst_stream(self->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
        st->rst_sent = 1;
    }
    else {
        char text[4];
        snprintf(text, sizeof(text), "%ld", status);
        const nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)text, 7, 3, NGHTTP2_NV_FLAG_NO_COPY_NAME}};
        rv = nghttp2_submit_response(self->ng, id, nv, 1, NULL);
    }
    if (rv != 0) {
        submit_error(rv);
        return NULL;
    }
    mark_finished(self, st);
    Py_RETURN_NONE;
}

static PyObject *
Session_reset(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"stream_id", "error_code", NULL};
    PyObject *a[2];
    int32_t id;
    uint32_t code;

    if (unpack("reset", args, nargs, kwnames, names, 1, a) < 0 || stream_id_arg(a[0], &id) < 0
        || error_code_arg(a[1], NGHTTP2_CANCEL, &code) < 0)
        return NULL;
    /* Allowed after finish() too: it aborts a response still held back by flow control. */
    Stream *st = id > 0 ? nghttp2_session_get_stream_user_data(self->ng, id) : NULL;
    if (st == NULL || !st->announced || st->rst_sent)
        Py_RETURN_NONE;
    int rv = nghttp2_submit_rst_stream(self->ng, NGHTTP2_FLAG_NONE, id, code);
    if (rv != 0) {
        submit_error(rv);
        return NULL;
    }
    st->rst_sent = 1;
    mark_finished(self, st);
    Py_RETURN_NONE;
}

static PyObject *
Session_shutdown_notice(Session *self, PyObject *Py_UNUSED(ignored))
{
    int rv = nghttp2_submit_shutdown_notice(self->ng);

    /* INVALID_STATE: the session is already going away, which is what was asked for. */
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_STATE) {
        submit_error(rv);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Session_ping(Session *self, PyObject *Py_UNUSED(ignored))
{
    /* nghttp2 sends a PING ahead of the frames already queued; it must follow them, so that its
     * acknowledgement says the peer has read them: they are serialized first. */
    if (!self->broken && drain(self) < 0)
        return NULL;
    int rv = nghttp2_submit_ping(self->ng, NGHTTP2_FLAG_NONE, PING_OPAQUE);

    if (rv != 0) {
        submit_error(rv);
        return NULL;
    }
    self->pings_sent++;
    Py_RETURN_NONE;
}

static PyObject *
Session_goaway(Session *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"error_code", NULL};
    PyObject *a[1];
    uint32_t code;

    if (unpack("goaway", args, nargs, kwnames, names, 0, a) < 0 || error_code_arg(a[0], NGHTTP2_NO_ERROR, &code) < 0)
        return NULL;
    self->local_goaway = 1;
    int rv = nghttp2_session_terminate_session(self->ng, code);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_STATE) {
        submit_error(rv);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Session_get_open_streams(Session *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->nstreams);
}

static PyObject *
Session_get_pings_unacked(Session *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->pings_sent - self->pings_acked);
}

static PyObject *
Session_get_buffered_bytes(Session *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->buffered);
}

#define FAST (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef Session_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))Session_feed, FAST,
     "feed(data) -> list of events: process received bytes; raises H2Error on a connection error."},
    {"data_to_send", (PyCFunction)Session_data_to_send, METH_NOARGS,
     "data_to_send() -> bytes: everything the session has to write now (b'' when nothing)."},
    {"want_read", (PyCFunction)Session_want_read, METH_NOARGS, "want_read() -> bool"},
    {"want_write", (PyCFunction)Session_want_write, METH_NOARGS, "want_write() -> bool"},
    {"send_headers", (PyCFunction)(void (*)(void))Session_send_headers, FAST,
     "send_headers(stream_id): start the response (:status 200, content-type application/grpc)."},
    {"send_message", (PyCFunction)(void (*)(void))Session_send_message, FAST,
     "send_message(stream_id, payload): queue one length-prefixed gRPC message."},
    {"finish", (PyCFunction)(void (*)(void))Session_finish, FAST,
     "finish(stream_id, trailers): end the response with these trailers (trailers-only if no headers went)."},
    {"unary", (PyCFunction)(void (*)(void))Session_unary, FAST,
     "unary(stream_id, payload, trailers): send_headers + send_message + finish."},
    {"reject", (PyCFunction)(void (*)(void))Session_reject, FAST,
     "reject(stream_id, http_status): a headers-only response with this :status."},
    {"reset", (PyCFunction)(void (*)(void))Session_reset, FAST,
     "reset(stream_id, error_code=8): RST_STREAM."},
    {"shutdown_notice", (PyCFunction)Session_shutdown_notice, METH_NOARGS,
     "shutdown_notice(): the graceful-shutdown GOAWAY (no new streams past those in flight)."},
    {"ping", (PyCFunction)Session_ping, METH_NOARGS,
     "ping(): a PING after every frame queued so far; pings_unacked counts it until the peer acknowledges it."},
    {"goaway", (PyCFunction)(void (*)(void))Session_goaway, FAST,
     "goaway(error_code=0): the final GOAWAY; the session ends once it is written."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Session_getset[] = {
    {"open_streams", (getter)Session_get_open_streams, NULL, "streams with live state", NULL},
    {"pings_unacked", (getter)Session_get_pings_unacked, NULL, "this side's PINGs the peer has not acknowledged",
     NULL},
    {"buffered_bytes", (getter)Session_get_buffered_bytes, NULL,
     "bytes held in unfinished request messages, over all streams (bounded by max_buffered_bytes)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "service.grpc._h2.Session",
    .tp_basicsize = sizeof(Session),
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Session(max_message_bytes, max_concurrent_streams=1024, window_bytes=16 MiB, "
              "max_buffered_bytes=0): the server side of one HTTP/2 connection carrying gRPC calls; "
              "max_buffered_bytes (0: 4 * max_message_bytes, at least 1 MiB) bounds the bytes of "
              "unfinished request messages it holds over all its streams.",
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
    .tp_new = Session_new,
};

/* ------------------------------------------------------------------------------------------------ */
/* Module */

static void
module_free(void *module)
{
    (void)module;
    nghttp2_session_callbacks_del(callbacks); /* accepts NULL */
    callbacks = NULL;
    for (int kind = EV_HEADERS; kind < EV_COUNT; kind++)
        Py_CLEAR(kind_obj[kind]);
    Py_CLEAR(post_bytes);
    Py_CLEAR(H2Error);
}

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "service.grpc._h2",
    .m_doc = "A server-side HTTP/2 session for gRPC over libnghttp2: whole calls in, framed bytes out.",
    .m_size = -1,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__h2(void)
{
    static const char *const kind_names[EV_COUNT] = {NULL, "HEADERS", "MESSAGE", "END", "TOO_LARGE", "CLOSED", "BUSY"};

    if (PyType_Ready(&SessionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (nghttp2_session_callbacks_new(&callbacks) != 0) {
        PyErr_NoMemory();
        goto fail;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);

    for (int kind = EV_HEADERS; kind < EV_COUNT; kind++) {
        kind_obj[kind] = PyLong_FromLong(kind);
        if (kind_obj[kind] == NULL || PyModule_AddObjectRef(m, kind_names[kind], kind_obj[kind]) < 0)
            goto fail;
    }
    post_bytes = PyBytes_FromStringAndSize("POST", 4);
    if (post_bytes == NULL)
        goto fail;
    H2Error = PyErr_NewExceptionWithDoc(
        "service.grpc._h2.H2Error",
        "A fatal HTTP/2 connection error; data_to_send() still holds the GOAWAY to write before closing.",
        NULL, NULL);
    if (H2Error == NULL || PyModule_AddObjectRef(m, "H2Error", H2Error) < 0
        || PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0)
        goto fail;
    return m;

fail:
    Py_DECREF(m);
    return NULL;
}
