/* The NOTIFY payload decoder of spop/frames.py (`decode_messages`) in C: a CPython extension,
 * `coraza_spoa_py._spop_fast`, used through `coraza_spoa_py/spop_native.py`.
 *
 * Why (docs/performance.md change 22): decoding a coraza-req and building its twelve `Arg`
 * objects was the biggest piece of the hub's per-message Python after the socket calls; a
 * frozen dataclass's __init__ alone sets every field through object.__setattr__.
 *
 * Scope: what HAProxy sends (docs/protocol.md "What HAProxy sends"): message and argument names
 * shorter than 240 bytes; NULL, BOOL, IPV4, IPV6; STRING/BINARY values whose length, and
 * integers whose value, are varints of one to three bytes (below 2^18: signed or not, the
 * same number).
 * On anything else -- another type, a longer varint, a frame cut short, an error -- it returns
 * None and the caller runs the pure-Python decoder over the same bytes, which produces the
 * value or raises the SpopError. So the pure codec stays the reference for every error, and
 * tests/integration/test_spop_native.py feeds both the same bytes and requires the same result.
 *
 * Objects are built the way the dataclasses' own __init__ would leave them: an instance of the
 * class (`Arg`, `Message`) with each slot set, written through the slots' member offsets
 * (frozen dataclasses refuse __setattr__, object.__setattr__ writes the same offsets). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* type bytes (docs/protocol.md "Typed data"); BOOL carries its value in the flag nibble */
enum {
    T_NULL_ = 0, T_BOOL_FALSE_ = 0x01, T_BOOL_TRUE_ = 0x11, T_INT32_ = 2, T_UINT32_ = 3,
    T_INT64_ = 4, T_UINT64_ = 5, T_IPV4_ = 6, T_IPV6_ = 7, T_STRING_ = 8, T_BINARY_ = 9
};
#define NAME_CACHE_SLOTS 256
#define NAME_CACHE_MAX_LEN 64

typedef struct {
    Py_ssize_t len;
    char bytes[NAME_CACHE_MAX_LEN];
    PyObject *str;
} cached_name;

static PyTypeObject *arg_type, *message_type, *notify_type;
static Py_ssize_t arg_name_at, arg_type_at, arg_value_at, message_name_at, message_args_at;
static Py_ssize_t notify_stream_at, notify_frame_at, notify_messages_at;
static PyObject *data_types[10]; /* DataType members by id */
static PyObject *ipv4_factory;   /* frames._ipv4: cached IPv4Address from 4 packed bytes */
static PyObject *ipv6_factory;   /* IPv6Address */
/* names repeat from message to message (coraza-req's twelve args): one str each, reused;
 * only touched with the GIL held */
static cached_name name_cache[NAME_CACHE_SLOTS];

static PyObject *latin1_name(const unsigned char *at, Py_ssize_t len) {
    if (len > NAME_CACHE_MAX_LEN)
        return PyUnicode_DecodeLatin1((const char *)at, len, NULL);
    uint32_t hash = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < len; i++)
        hash = (hash ^ at[i]) * 16777619u;
    cached_name *slot = &name_cache[hash % NAME_CACHE_SLOTS];
    if (slot->str != NULL && slot->len == len && memcmp(slot->bytes, at, (size_t)len) == 0) {
        Py_INCREF(slot->str);
        return slot->str;
    }
    PyObject *str = PyUnicode_DecodeLatin1((const char *)at, len, NULL);
    if (str == NULL)
        return NULL;
    Py_XSETREF(slot->str, Py_NewRef(str));
    slot->len = len;
    memcpy(slot->bytes, at, (size_t)len);
    return str;
}

/* an instance of `type` with two or three slots set; steals the references of the values */
static PyObject *build(PyTypeObject *type, Py_ssize_t at1, PyObject *v1, Py_ssize_t at2,
                       PyObject *v2, Py_ssize_t at3, PyObject *v3) {
    PyObject *self = (v1 == NULL || v2 == NULL) ? NULL : type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_XDECREF(v1);
        Py_XDECREF(v2);
        Py_XDECREF(v3);
        return NULL;
    }
    *(PyObject **)((char *)self + at1) = v1;
    *(PyObject **)((char *)self + at2) = v2;
    if (v3 != NULL)
        *(PyObject **)((char *)self + at3) = v3;
    return self;
}

/* docs/protocol.md "Varints", one to three bytes (the hot path's range); -1: longer or cut short */
static long long short_varint(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t end) {
    Py_ssize_t at = *pos;
    if (at >= end)
        return -1;
    long long number = buf[at++];
    if (number >= 240) {
        if (at < end && buf[at] < 128) {
            number += (long long)buf[at] << 4;
            at += 1;
        } else if (at + 1 < end && buf[at + 1] < 128) {
            number += ((long long)buf[at] << 4) + ((long long)buf[at + 1] << 11);
            at += 2;
        } else {
            return -1;
        }
    }
    *pos = at;
    return number;
}

/* LIST-OF-MESSAGES in buf[pos:end] -> tuple of Message; None: use the Python decoder */
static PyObject *decode_span(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end) {
    PyObject *messages = PyList_New(0), *args = NULL, *result = NULL;
    if (messages == NULL)
        goto done;
    while (pos < end) {
        Py_ssize_t size = buf[pos];
        if (size >= 240 || pos + 1 + size >= end) /* the name, then NB-ARGS */
            goto fallback;
        PyObject *name = latin1_name(buf + pos + 1, size);
        if (name == NULL)
            goto done;
        pos += 1 + size;
        int count = buf[pos++];
        args = PyTuple_New(count);
        if (args == NULL) {
            Py_DECREF(name);
            goto done;
        }
        for (int index = 0; index < count; index++) {
            /* the name (shorter than 240 bytes), then at least the type byte */
            if (pos >= end || (size = buf[pos]) >= 240 || pos + 1 + size >= end) {
                Py_DECREF(name);
                goto fallback;
            }
            const unsigned char *arg_name = buf + pos + 1;
            int type_byte = buf[pos + 1 + size];
            Py_ssize_t after = pos + 2 + size, value_at = after;
            PyObject *value = NULL;
            long long number;
            switch (type_byte) {
            case T_NULL_:
                value = Py_NewRef(Py_None);
                break;
            case T_BOOL_FALSE_:
            case T_BOOL_TRUE_: /* docs/protocol.md "Typed data": the value is the flag bit */
                value = PyBool_FromLong(type_byte == T_BOOL_TRUE_);
                break;
            case T_IPV4_:
            case T_IPV6_: {
                Py_ssize_t width = type_byte == T_IPV4_ ? 4 : 16;
                if (value_at + width > end) {
                    Py_DECREF(name);
                    goto fallback;
                }
                PyObject *packed = PyBytes_FromStringAndSize((const char *)buf + value_at, width);
                value = packed == NULL ? NULL
                                       : PyObject_CallOneArg(
                                             type_byte == T_IPV4_ ? ipv4_factory : ipv6_factory,
                                             packed);
                Py_XDECREF(packed);
                after = value_at + width;
                break;
            }
            case T_STRING_:
            case T_BINARY_:
                number = short_varint(buf, &after, end);
                if (number < 0 || after + number > end) {
                    Py_DECREF(name);
                    goto fallback;
                }
                value = PyBytes_FromStringAndSize((const char *)buf + after, number);
                after += number;
                break;
            case T_INT32_:
            case T_UINT32_:
            case T_INT64_:
            case T_UINT64_:
                /* below 2^18: the same int signed or not (docs/protocol.md "Varints") */
                number = short_varint(buf, &after, end);
                if (number < 0) {
                    Py_DECREF(name);
                    goto fallback;
                }
                value = PyLong_FromLongLong(number);
                break;
            default:
                Py_DECREF(name);
                goto fallback;
            }
            if (value == NULL) {
                Py_DECREF(name);
                goto done;
            }
            PyObject *key = latin1_name(arg_name, size);
            if (key == NULL) {
                Py_DECREF(value);
                Py_DECREF(name);
                goto done;
            }
            PyObject *arg = build(arg_type, arg_name_at, key, arg_type_at,
                                  Py_NewRef(data_types[type_byte & 0x0F]), arg_value_at, value);
            if (arg == NULL) {
                Py_DECREF(name);
                goto done;
            }
            PyTuple_SET_ITEM(args, index, arg);
            pos = after;
        }
        PyObject *message = build(message_type, message_name_at, name, message_args_at, args,
                                  0, NULL);
        args = NULL; /* stolen */
        if (message == NULL)
            goto done;
        int failed = PyList_Append(messages, message);
        Py_DECREF(message);
        if (failed < 0)
            goto done;
    }
    result = PyList_AsTuple(messages);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(args);
    Py_XDECREF(messages);
    return result;
}

static int ready(void) {
    if (arg_type != NULL)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "_spop_fast.setup() was not called");
    return 0;
}

/* decode_messages(payload) -> tuple[Message, ...] | None (None: use the Python decoder) */
static PyObject *decode_messages(PyObject *module, PyObject *payload) {
    (void)module;
    Py_buffer view;
    if (!ready() || PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = decode_span(view.buf, 0, view.len);
    PyBuffer_Release(&view);
    return result;
}

/* next_notify(buffer, offset, frame_limit) -> (Notify, next offset) | None
 *
 * The frame at `offset` when it is a whole NOTIFY that Connection would accept as it is
 * (docs/protocol.md "Frame layout", "NOTIFY and ACK": LENGTH from 7 to the negotiated limit, type 3, FIN, stream-id and
 * frame-id as varints of one to three bytes) and whose payload decode_span takes. None for
 * anything else, including a frame not yet complete: Connection's own path then reads the
 * same frame, and waits, decodes it or raises its error. */
static PyObject *next_notify(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    (void)module;
    if (argc != 3) {
        PyErr_SetString(PyExc_TypeError, "next_notify(buffer, offset, frame_limit)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(argv[1]);
    long long limit = PyLong_AsLongLong(argv[2]);
    if ((offset == -1 || limit == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (!ready() || PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = view.buf;
    PyObject *result = NULL;
    if (offset < 0 || view.len - offset < 4 + 7)
        goto fallback;
    const unsigned char *at = buf + offset;
    long long length = ((long long)at[0] << 24) | (at[1] << 16) | (at[2] << 8) | at[3];
    Py_ssize_t end = offset + 4 + (Py_ssize_t)length;
    /* type NOTIFY, flags (big endian) with FIN */
    if (length < 7 || length > limit || end > view.len || at[4] != 3 || !(at[8] & 1))
        goto fallback;
    Py_ssize_t pos = offset + 9;
    long long stream_id = short_varint(buf, &pos, end);
    long long frame_id = stream_id < 0 ? -1 : short_varint(buf, &pos, end);
    if (frame_id < 0)
        goto fallback;
    PyObject *messages = decode_span(buf, pos, end);
    if (messages == NULL || messages == Py_None) {
        result = messages;
        goto done;
    }
    PyObject *notify = build(notify_type, notify_stream_at, PyLong_FromLongLong(stream_id),
                             notify_frame_at, PyLong_FromLongLong(frame_id), notify_messages_at,
                             messages);
    if (notify == NULL)
        goto done;
    result = Py_BuildValue("(Nn)", notify, end);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return result;
}

static int slot_offset(PyTypeObject *type, const char *field, Py_ssize_t *offset) {
    PyObject *descr = PyDict_GetItemString(type->tp_dict, field); /* borrowed */
    if (descr == NULL || !PyObject_TypeCheck(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, field);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, field);
        return -1;
    }
    *offset = member->offset;
    return 0;
}

/* setup(Arg, Message, Notify, DataType, ipv4, ipv6): the classes to build, read once */
static PyObject *setup(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *arg, *message, *notify, *data_type, *ipv4, *ipv6;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO", &PyType_Type, &arg, &PyType_Type, &message,
                          &PyType_Type, &notify, &data_type, &ipv4, &ipv6))
        return NULL;
    PyTypeObject *a = (PyTypeObject *)arg, *m = (PyTypeObject *)message;
    PyTypeObject *n = (PyTypeObject *)notify;
    if (slot_offset(a, "name", &arg_name_at) < 0 || slot_offset(a, "type", &arg_type_at) < 0 ||
        slot_offset(a, "value", &arg_value_at) < 0 ||
        slot_offset(m, "name", &message_name_at) < 0 ||
        slot_offset(m, "args", &message_args_at) < 0 ||
        slot_offset(n, "stream_id", &notify_stream_at) < 0 ||
        slot_offset(n, "frame_id", &notify_frame_at) < 0 ||
        slot_offset(n, "messages", &notify_messages_at) < 0)
        return NULL;
    for (int id = 0; id < 10; id++) {
        PyObject *member = PyObject_CallFunction(data_type, "i", id);
        if (member == NULL)
            return NULL;
        Py_XSETREF(data_types[id], member);
    }
    Py_XSETREF(ipv4_factory, Py_NewRef(ipv4));
    Py_XSETREF(ipv6_factory, Py_NewRef(ipv6));
    Py_XSETREF(arg_type, (PyTypeObject *)Py_NewRef(arg));
    Py_XSETREF(message_type, (PyTypeObject *)Py_NewRef(message));
    Py_XSETREF(notify_type, (PyTypeObject *)Py_NewRef(notify));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(Arg, Message, Notify, DataType, ipv4_factory, ipv6_factory)"},
    {"next_notify", (PyCFunction)(void (*)(void))next_notify, METH_FASTCALL,
     "next_notify(buffer, offset, frame_limit) -> (Notify, next offset), or None"},
    {"decode_messages", decode_messages, METH_O,
     "decode_messages(payload) -> tuple of Message, or None: decode it in Python"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "coraza_spoa_py._spop_fast",
    "SPOP NOTIFY decoding in C (coraza_spoa_py/spop_native.py)", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spop_fast(void) { return PyModule_Create(&module_def); }
