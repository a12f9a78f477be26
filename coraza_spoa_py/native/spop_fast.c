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
#include <limits.h>
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
    if (notify_type != NULL) /* set last by setup() (setup_messages() sets arg_type too) */
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

/* the DataType members by id (setup, setup_messages) */
static int load_data_types(PyObject *data_type) {
    for (int id = 0; id < 10; id++) {
        PyObject *member = PyObject_CallFunction(data_type, "i", id);
        if (member == NULL)
            return -1;
        Py_XSETREF(data_types[id], member);
    }
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
    if (load_data_types(data_type) < 0)
        return NULL;
    Py_XSETREF(ipv4_factory, Py_NewRef(ipv4));
    Py_XSETREF(ipv6_factory, Py_NewRef(ipv6));
    Py_XSETREF(arg_type, (PyTypeObject *)Py_NewRef(arg));
    Py_XSETREF(message_type, (PyTypeObject *)Py_NewRef(message));
    Py_XSETREF(notify_type, (PyTypeObject *)Py_NewRef(notify));
    Py_RETURN_NONE;
}

/* ---- the ACK encoder ------------------------------------------------------------------------
 *
 * spop/frames.py `encode_ack` in C (docs/performance.md change 27): a whole ACK frame (LENGTH,
 * type, FIN, ids, LIST-OF-ACTIONS) from SetVar/UnsetVar objects, read through their slots.
 * Scope: the actions the agent sends: exact SetVar/UnsetVar, scopes 0-4, names of 1-63
 * characters of [A-Za-z0-9_.], values NULL, BOOL, the four integer types (range-checked as
 * the Python encoder does), STRING/BINARY from bytes or str (utf-8), the type given or
 * inferred as `infer_type` does; at most ACK_MAX bytes. Anything else, and every error,
 * returns None: the caller encodes the same actions in Python, which produces the frame or
 * raises its error. tests/integration/test_spop_native.py compares both. */
#define ACK_MAX 2048

static PyTypeObject *set_var_type, *unset_var_type;
static Py_ssize_t set_scope_at, set_name_at, set_value_at, set_type_at;
static Py_ssize_t unset_scope_at, unset_name_at;

typedef struct {
    unsigned char bytes[ACK_MAX];
    Py_ssize_t len;
} ack_buffer;

static int put(ack_buffer *out, const void *data, Py_ssize_t len) {
    if (len > ACK_MAX - out->len)
        return -1;
    memcpy(out->bytes + out->len, data, (size_t)len);
    out->len += len;
    return 0;
}

/* docs/protocol.md "Varints" (wire.encode_varint for 0 <= value < 2^64) */
static int put_varint(ack_buffer *out, unsigned long long value) {
    unsigned char tmp[10];
    int n = 0;
    if (value < 240) {
        tmp[n++] = (unsigned char)value;
    } else {
        tmp[n++] = (unsigned char)((value & 0xFF) | 0xF0);
        value = (value - 240) >> 4;
        while (value >= 128) {
            tmp[n++] = (unsigned char)((value & 0xFF) | 0x80);
            value = (value - 128) >> 7;
        }
        tmp[n++] = (unsigned char)value;
    }
    return put(out, tmp, n);
}

static PyObject *slot(PyObject *self, Py_ssize_t at) { return *(PyObject **)((char *)self + at); }

/* action type, arg count, scope, name: the head of SET-VAR (3 args) and UNSET-VAR (2) */
static int put_head(ack_buffer *out, int action, int nb_args, PyObject *scope, PyObject *name) {
    if (scope == NULL || !PyLong_Check(scope) || name == NULL || !PyUnicode_CheckExact(name))
        return -1;
    long scope_id = PyLong_AsLong(scope);
    if (scope_id < 0 || scope_id > 4) /* also -1 with an error set: cleared by the caller */
        return -1;
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(name, &len);
    if (text == NULL || len < 1 || len > 63)
        return -1;
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = text[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.'))
            return -1;
    }
    unsigned char head[4] = {(unsigned char)action, (unsigned char)nb_args,
                             (unsigned char)scope_id, (unsigned char)len};
    return put(out, head, 4) < 0 ? -1 : put(out, text, len);
}

/* the typed value of a SET-VAR (wire.encode_value) */
static int put_value(ack_buffer *out, PyObject *value, PyObject *type) {
    long id;
    if (value == NULL)
        return -1;
    if (type == Py_None) { /* wire.infer_type, for the types handled here */
        if (PyBool_Check(value))
            id = 1;
        else if (PyLong_Check(value))
            id = T_INT64_;
        else if (PyBytes_Check(value))
            id = T_BINARY_;
        else if (PyUnicode_Check(value))
            id = T_STRING_;
        else if (value == Py_None)
            id = T_NULL_;
        else
            return -1;
    } else if (type != NULL && PyLong_Check(type)) {
        id = PyLong_AsLong(type);
    } else {
        return -1;
    }
    unsigned char type_byte = (unsigned char)id;
    if (id == T_STRING_ || id == T_BINARY_) {
        const char *data;
        Py_ssize_t len;
        if (PyBytes_Check(value)) {
            data = PyBytes_AS_STRING(value);
            len = PyBytes_GET_SIZE(value);
        } else if (PyUnicode_Check(value)) {
            data = PyUnicode_AsUTF8AndSize(value, &len); /* NULL for lone surrogates */
            if (data == NULL)
                return -1;
        } else {
            return -1;
        }
        if (put(out, &type_byte, 1) < 0 || put_varint(out, (unsigned long long)len) < 0)
            return -1;
        return put(out, data, len);
    }
    if (id == T_INT32_ || id == T_UINT32_ || id == T_INT64_ || id == T_UINT64_) {
        if (!PyLong_Check(value))
            return -1;
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow != 0 || (number == -1 && PyErr_Occurred()))
            return -1; /* beyond int64 (UINT64's upper half too): the Python encoder's call */
        int is_signed = id == T_INT32_ || id == T_INT64_;
        if (!is_signed && number < 0)
            return -1;
        if (put(out, &type_byte, 1) < 0)
            return -1;
        /* a negative number is sent as its two's complement (wire.encode_varint) */
        return put_varint(out, (unsigned long long)number);
    }
    if (id == 1) { /* BOOL: the value in the flag nibble */
        if (!PyBool_Check(value))
            return -1;
        unsigned char b = value == Py_True ? T_BOOL_TRUE_ : T_BOOL_FALSE_;
        return put(out, &b, 1);
    }
    if (id == T_NULL_ && value == Py_None)
        return put(out, &type_byte, 1);
    return -1; /* IPV4/IPV6, unknown ids, mismatched values */
}

static int put_action(ack_buffer *out, PyObject *action) {
    if (Py_IS_TYPE(action, unset_var_type))
        return put_head(out, 2, 2, slot(action, unset_scope_at), slot(action, unset_name_at));
    if (!Py_IS_TYPE(action, set_var_type))
        return -1;
    if (put_head(out, 1, 3, slot(action, set_scope_at), slot(action, set_name_at)) < 0)
        return -1;
    return put_value(out, slot(action, set_value_at), slot(action, set_type_at));
}

/* encode_ack(stream_id, frame_id, actions) -> bytes (the whole frame) | None */
static PyObject *encode_ack(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    (void)module;
    if (argc != 3) {
        PyErr_SetString(PyExc_TypeError, "encode_ack(stream_id, frame_id, actions)");
        return NULL;
    }
    if (set_var_type == NULL || !PyLong_Check(argv[0]) || !PyLong_Check(argv[1]))
        Py_RETURN_NONE;
    unsigned long long stream_id = PyLong_AsUnsignedLongLong(argv[0]);
    unsigned long long frame_id = PyLong_AsUnsignedLongLong(argv[1]);
    if (PyErr_Occurred()) { /* negative or beyond 64 bits */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *actions = PySequence_Fast(argv[2], "actions");
    if (actions == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    ack_buffer out;
    /* LENGTH (filled in last), ACK (103), FLAGS = FIN (docs/protocol.md "Frame layout") */
    static const unsigned char head[9] = {0, 0, 0, 0, 103, 0, 0, 0, 1};
    memcpy(out.bytes, head, sizeof head);
    out.len = sizeof head;
    int failed = put_varint(&out, stream_id) < 0 || put_varint(&out, frame_id) < 0;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(actions);
    PyObject **items = PySequence_Fast_ITEMS(actions);
    if (count == 0 && !failed) {
        /* never an empty list: UNSET-VAR txn.noop, as frames.encode_actions */
        static const unsigned char noop[8] = {2, 2, 2, 4, 'n', 'o', 'o', 'p'};
        failed = put(&out, noop, sizeof noop) < 0;
    }
    for (Py_ssize_t i = 0; i < count && !failed; i++)
        failed = put_action(&out, items[i]) < 0;
    Py_DECREF(actions);
    if (failed) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    uint32_t length = (uint32_t)(out.len - 4);
    out.bytes[0] = (unsigned char)(length >> 24);
    out.bytes[1] = (unsigned char)(length >> 16);
    out.bytes[2] = (unsigned char)(length >> 8);
    out.bytes[3] = (unsigned char)length;
    return PyBytes_FromStringAndSize((const char *)out.bytes, out.len);
}

static PyObject *setup_actions(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *set_var, *unset_var;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &set_var, &PyType_Type, &unset_var))
        return NULL;
    PyTypeObject *s = (PyTypeObject *)set_var, *u = (PyTypeObject *)unset_var;
    if (slot_offset(s, "scope", &set_scope_at) < 0 || slot_offset(s, "name", &set_name_at) < 0 ||
        slot_offset(s, "value", &set_value_at) < 0 || slot_offset(s, "type", &set_type_at) < 0 ||
        slot_offset(u, "scope", &unset_scope_at) < 0 || slot_offset(u, "name", &unset_name_at) < 0)
        return NULL;
    Py_XSETREF(set_var_type, (PyTypeObject *)Py_NewRef(set_var));
    Py_XSETREF(unset_var_type, (PyTypeObject *)Py_NewRef(unset_var));
    Py_RETURN_NONE;
}

/* -- header blocks (docs/performance.md change 42) --------------------------------------------
 * HAProxy's text header block (req.hdrs/res.hdrs: `name: value\r\n` per header, then `\r\n`)
 * straight into the records native/msc_glue.c reads ([4-byte LE length][name][4-byte LE
 * length][value] per header): what header_blocks.parse_text_header_block and the packing
 * after it give, without a bytes object and a tuple per header. Anything the Python parser
 * would refuse gives None, and the caller runs it for its HeaderBlockError (its reference). */

static int is_optional_whitespace(unsigned char c) { return c == ' ' || c == '\t'; }

static void put_record(unsigned char **out, const unsigned char *at, Py_ssize_t len) {
    uint32_t n = (uint32_t)len;
    unsigned char *o = *out;
    o[0] = (unsigned char)n;
    o[1] = (unsigned char)(n >> 8);
    o[2] = (unsigned char)(n >> 16);
    o[3] = (unsigned char)(n >> 24);
    memcpy(o + 4, at, (size_t)len);
    *out = o + 4 + len;
}

/* One pass over the lines; `out` NULL: only checks and sizes. Returns the records' size, or
 * -1 when the block is not one parse_text_header_block accepts. */
static Py_ssize_t text_header_records(const unsigned char *buf, Py_ssize_t len,
                                      unsigned char *out) {
    Py_ssize_t size = 0;
    if (len == 0)
        return 0;
    /* the block ends with an empty line: "\r\n" alone, or a last header line's "\r\n\r\n" */
    if (len < 2 || buf[len - 2] != '\r' || buf[len - 1] != '\n')
        return -1;
    Py_ssize_t end = len - 2; /* the lines, each ending with its "\r\n" */
    if (end > 0 && (end < 2 || buf[end - 2] != '\r' || buf[end - 1] != '\n'))
        return -1;
    Py_ssize_t pos = 0;
    while (pos < end) {
        /* the line ends at the first "\r\n" (as bytes.split finds it) */
        const unsigned char *line = buf + pos;
        Py_ssize_t line_len = 0;
        while (!(line[line_len] == '\r' && line[line_len + 1] == '\n'))
            line_len++;
        const unsigned char *colon = memchr(line, ':', (size_t)line_len);
        if (colon == NULL)
            return -1;
        Py_ssize_t name_start = 0, name_end = colon - line;
        while (name_start < name_end && is_optional_whitespace(line[name_start]))
            name_start++;
        while (name_end > name_start && is_optional_whitespace(line[name_end - 1]))
            name_end--;
        if (name_end == name_start)
            return -1;
        Py_ssize_t value_start = colon - line + 1, value_end = line_len;
        while (value_start < value_end && is_optional_whitespace(line[value_start]))
            value_start++;
        while (value_end > value_start && is_optional_whitespace(line[value_end - 1]))
            value_end--;
        size += 8 + (name_end - name_start) + (value_end - value_start);
        if (out != NULL) {
            put_record(&out, line + name_start, name_end - name_start);
            put_record(&out, line + value_start, value_end - value_start);
        }
        pos += line_len + 2;
    }
    return size;
}

/* HAProxy's binary header block (req.hdrs_bin: varint-length-prefixed name and value per
 * header, then two empty strings) into the same records: what parse_binary_header_block and
 * the packing give. Lengths of one to three varint bytes only (below 2^18); a longer one, like
 * anything the parser refuses, gives None and the Python parser reads the block. */
static Py_ssize_t binary_header_records(const unsigned char *buf, Py_ssize_t len,
                                        unsigned char *out) {
    Py_ssize_t size = 0, pos = 0;
    for (;;) {
        long long name_len = short_varint(buf, &pos, len);
        if (name_len < 0 || name_len > len - pos)
            return -1;
        const unsigned char *name = buf + pos;
        pos += (Py_ssize_t)name_len;
        long long value_len = short_varint(buf, &pos, len);
        if (value_len < 0 || value_len > len - pos)
            return -1;
        const unsigned char *value = buf + pos;
        pos += (Py_ssize_t)value_len;
        if (name_len == 0) {
            if (value_len != 0) /* a value without a name */
                return -1;
            break;
        }
        size += 8 + (Py_ssize_t)name_len + (Py_ssize_t)value_len;
        if (out != NULL) {
            put_record(&out, name, (Py_ssize_t)name_len);
            put_record(&out, value, (Py_ssize_t)value_len);
        }
    }
    return pos == len ? size : -1; /* nothing after the terminator */
}

typedef Py_ssize_t (*records_reader)(const unsigned char *, Py_ssize_t, unsigned char *);

static PyObject *pack_header_block(PyObject *block, records_reader read) {
    if (!PyBytes_CheckExact(block))
        Py_RETURN_NONE;
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(block);
    Py_ssize_t len = PyBytes_GET_SIZE(block);
    if (len > (Py_ssize_t)UINT32_MAX) /* the records' lengths are 32 bits */
        Py_RETURN_NONE;
    Py_ssize_t size = read(buf, len, NULL);
    if (size < 0)
        Py_RETURN_NONE;
    PyObject *records = PyBytes_FromStringAndSize(NULL, size);
    if (records == NULL)
        return NULL;
    read(buf, len, (unsigned char *)PyBytes_AS_STRING(records));
    return records;
}

static PyObject *pack_text_header_block(PyObject *module, PyObject *block) {
    (void)module;
    return pack_header_block(block, text_header_records);
}

static PyObject *pack_binary_header_block(PyObject *module, PyObject *block) {
    (void)module;
    return pack_header_block(block, binary_header_records);
}

/* -- rule-match records (docs/performance.md change 43) ------------------------------------
 * The records native/msc_glue_rm.cc writes (msc_glue.h "cs_log records"), decoded as
 * engine/matches.py's Python reader decodes them: one tuple per record, (rule id, line, phase,
 * severity, maturity, accuracy, action, file, msg, data, rev, ver, server, uri, raw, tags), the
 * integers as they are, each string decoded as UTF-8 with "replace", the tags a tuple. The
 * Python loop and its struct calls, per string, were a measurable share of a blocked request's
 * hub time. Any read that would pass the buffer's end gives None: the glue never writes such a
 * buffer, and the caller then runs the Python reader, the reference. */

enum { RECORD_HEAD_ = 8 + 6 * 4, RECORD_STRINGS_ = 8 }; /* i64 + six u32; file .. raw */

static uint32_t le_u32(const unsigned char *at) {
    return (uint32_t)at[0] | ((uint32_t)at[1] << 8) | ((uint32_t)at[2] << 16) |
           ((uint32_t)at[3] << 24);
}

/* the string at *pos ([length: u32 LE][bytes]), decoded; NULL with *out_of_bounds set when it
 * does not fit before `end`, NULL alone on a Python error */
static PyObject *record_string(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t end,
                               int *out_of_bounds) {
    Py_ssize_t at = *pos;
    if (end - at < 4) {
        *out_of_bounds = 1;
        return NULL;
    }
    uint32_t len = le_u32(buf + at);
    at += 4;
    if ((uint64_t)len > (uint64_t)(end - at)) {
        *out_of_bounds = 1;
        return NULL;
    }
    *pos = at + (Py_ssize_t)len;
    return PyUnicode_DecodeUTF8((const char *)buf + at, (Py_ssize_t)len, "replace");
}

/* one record from *pos as its tuple; NULL with *out_of_bounds set, or on a Python error */
static PyObject *rule_record(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t end,
                             int *out_of_bounds) {
    Py_ssize_t at = *pos;
    if (end - at < RECORD_HEAD_) {
        *out_of_bounds = 1;
        return NULL;
    }
    uint64_t id_bits = (uint64_t)le_u32(buf + at) | ((uint64_t)le_u32(buf + at + 4) << 32);
    PyObject *record = PyTuple_New(7 + RECORD_STRINGS_ + 1);
    if (record == NULL)
        return NULL;
    PyObject *item = PyLong_FromLongLong((long long)id_bits);
    if (item == NULL)
        goto failed;
    PyTuple_SET_ITEM(record, 0, item);
    for (int i = 0; i < 6; i++) { /* line, phase, severity, maturity, accuracy, action */
        item = PyLong_FromUnsignedLong(le_u32(buf + at + 8 + 4 * i));
        if (item == NULL)
            goto failed;
        PyTuple_SET_ITEM(record, 1 + i, item);
    }
    at += RECORD_HEAD_;
    for (int i = 0; i < RECORD_STRINGS_; i++) {
        item = record_string(buf, &at, end, out_of_bounds);
        if (item == NULL)
            goto failed;
        PyTuple_SET_ITEM(record, 7 + i, item);
    }
    if (end - at < 4) {
        *out_of_bounds = 1;
        goto failed;
    }
    uint32_t count = le_u32(buf + at);
    at += 4;
    if ((uint64_t)count > (uint64_t)(end - at) / 4) { /* each tag takes 4 bytes at least */
        *out_of_bounds = 1;
        goto failed;
    }
    PyObject *tags = PyTuple_New((Py_ssize_t)count);
    if (tags == NULL)
        goto failed;
    PyTuple_SET_ITEM(record, 7 + RECORD_STRINGS_, tags);
    for (uint32_t i = 0; i < count; i++) {
        item = record_string(buf, &at, end, out_of_bounds);
        if (item == NULL)
            goto failed;
        PyTuple_SET_ITEM(tags, (Py_ssize_t)i, item);
    }
    *pos = at;
    return record;
failed: /* the tuples' unset items are NULL, which their deallocation skips */
    Py_DECREF(record);
    return NULL;
}

/* read_rule_records(buffer) -> list of record tuples, or None: a read past the end */
static PyObject *read_rule_records(PyObject *module, PyObject *buffer) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t pos = 0, end = view.len;
    int out_of_bounds = 0;
    PyObject *records = PyList_New(0);
    while (records != NULL && pos < end) {
        PyObject *record = rule_record(buf, &pos, end, &out_of_bounds);
        if (record == NULL || PyList_Append(records, record) < 0)
            Py_CLEAR(records);
        Py_XDECREF(record);
    }
    PyBuffer_Release(&view);
    if (out_of_bounds) /* set only where no Python call failed: no exception is pending */
        Py_RETURN_NONE;
    return records;
}

/* -- coraza-req / coraza-res arguments (docs/performance.md change 49) ---------------------
 * messages.py's parse_request_message / parse_response_message in C, for the shapes HAProxy
 * sends: each argument the message kind reads looked up by name in the message's order (the
 * first of a name wins, as args_by_name), checked and converted as the Python helpers do, and
 * the RequestInfo/RequestMessage (ResponseInfo/ResponseMessage) built slot by slot. Those
 * helpers and their thirty-odd calls per message were the largest piece of the hub's Python
 * left before the rule-match record. Anything the Python parser would refuse, and every shape
 * it converts in a way of its own (an address sent as text, a header block the packers above
 * leave, an element that is no Arg), returns None: the caller runs the Python parser over the
 * same message, which produces the result or raises its MalformedArgumentError. So the Python
 * parser stays the reference, and tests/integration/test_native_messages.py requires the same
 * result from both wherever C gives one. */

enum {
    A_ID, A_SRC_IP, A_SRC_PORT, A_DST_IP, A_DST_PORT, A_METHOD, A_PATH, A_QUERY, A_URL,
    A_VERSION, A_HEADERS, A_BODY, A_BODY_SIZE, A_STATUS, A_EXPORT, A_DETECT, A_COUNT
};
/* messages.py's ARG_* names, by the indexes above */
static const char *const arg_names[A_COUNT] = {
    "id", "src-ip", "src-port", "dst-ip", "dst-port", "method", "path", "query", "url",
    "version", "headers", "body", "body-size", "status", "exportRuleIDs", "detect-only",
};

/* RequestInfo's and ResponseInfo's fields, in the dataclasses' order */
enum {
    R_TRANSACTION_ID, R_METHOD, R_PATH, R_QUERY, R_VERSION, R_HEADERS, R_BODY, R_SRC_IP,
    R_SRC_PORT, R_DST_IP, R_DST_PORT, R_TARGET, R_DECLARED_BODY_SIZE, R_COUNT
};
static const char *const request_fields[R_COUNT] = {
    "transaction_id", "method", "path", "query", "version", "headers", "body", "src_ip",
    "src_port", "dst_ip", "dst_port", "target", "declared_body_size",
};
enum { S_TRANSACTION_ID, S_STATUS, S_VERSION, S_HEADERS, S_BODY, S_COUNT };
static const char *const response_fields[S_COUNT] = {
    "transaction_id", "status", "version", "headers", "body",
};
enum { M_INFO, M_EXPORT, M_DETECT, M_ID_GENERATED, M_COUNT };
static const char *const request_message_fields[M_COUNT] = {
    "request", "export_rule_ids", "detect_only", "id_generated",
};
static const char *const response_message_fields[M_COUNT - 1] = {
    "response", "export_rule_ids", "detect_only",
};

static PyTypeObject *request_info_type, *response_info_type;
static PyTypeObject *request_message_type, *response_message_type;
static PyTypeObject *header_records_type, *ipv4_class, *ipv6_class;
static Py_ssize_t request_at[R_COUNT], response_at[S_COUNT];
static Py_ssize_t request_message_at[M_COUNT], response_message_at[M_COUNT - 1];
static Py_ssize_t header_records_at;
/* messages.py's defaults: b"GET", b"/", b"1.1", b"", "" */
static PyObject *default_method, *default_path, *default_version, *no_bytes, *no_text;
static PyObject *ipv4_mapped_name;

/* what a reader gives: a value (a new reference, or NULL for "not sent"), LEAVE (the Python
 * parser decides) or FAILED (a Python error is set) */
enum { GOT = 0, LEAVE = 1, FAILED = -1 };

static int is_type(PyObject *arg, int id) { return slot(arg, arg_type_at) == data_types[id]; }
static int is_null(PyObject *arg) { return arg == NULL || is_type(arg, T_NULL_); }
static int is_integer_type(PyObject *arg) {
    return is_type(arg, T_INT32_) || is_type(arg, T_UINT32_) || is_type(arg, T_INT64_) ||
           is_type(arg, T_UINT64_);
}

/* the arguments by A_* index, borrowed; 0, or LEAVE when an element is not an exact Arg */
static int collect_args(PyObject *message, PyObject **found) {
    PyObject *args = slot(message, message_args_at);
    if (args == NULL || !PyTuple_CheckExact(args))
        return LEAVE;
    for (Py_ssize_t index = 0; index < PyTuple_GET_SIZE(args); index++) {
        PyObject *arg = PyTuple_GET_ITEM(args, index);
        if (Py_TYPE(arg) != arg_type || slot(arg, arg_type_at) == NULL ||
            slot(arg, arg_value_at) == NULL)
            return LEAVE;
        PyObject *name = slot(arg, arg_name_at);
        /* every name we read is ASCII: any other cannot be one of them */
        if (name == NULL || !PyUnicode_CheckExact(name) || !PyUnicode_IS_COMPACT_ASCII(name))
            continue;
        const char *text = (const char *)PyUnicode_DATA(name);
        size_t len = (size_t)PyUnicode_GET_LENGTH(name);
        for (int which = 0; which < A_COUNT; which++) {
            if (found[which] == NULL && strlen(arg_names[which]) == len &&
                memcmp(arg_names[which], text, len) == 0) {
                found[which] = arg;
                break;
            }
        }
    }
    return 0;
}

/* text_arg: STRING/BINARY bytes, or not sent (absent, NULL) */
static int read_text(PyObject *arg, PyObject **out) {
    *out = NULL;
    if (is_null(arg))
        return GOT;
    PyObject *value = slot(arg, arg_value_at);
    if ((is_type(arg, T_STRING_) || is_type(arg, T_BINARY_)) && PyBytes_Check(value)) {
        *out = Py_NewRef(value);
        return GOT;
    }
    return LEAVE;
}

/* read_text, or `otherwise` when not sent or empty (`text_arg(...) or otherwise`) */
static int read_text_or(PyObject *arg, PyObject *otherwise, PyObject **out) {
    int status = read_text(arg, out);
    if (status == GOT && (*out == NULL || PyBytes_GET_SIZE(*out) == 0))
        Py_XSETREF(*out, Py_NewRef(otherwise));
    return status;
}

/* `_version_arg(...) or b"1.1"`: without an "HTTP/" prefix, b"1.1" when nothing is left */
static int read_version(PyObject *arg, PyObject **out) {
    int status = read_text(arg, out);
    if (status != GOT)
        return status;
    if (*out != NULL && PyBytes_GET_SIZE(*out) >= 5 &&
        memcmp(PyBytes_AS_STRING(*out), "HTTP/", 5) == 0) {
        Py_SETREF(*out, PyBytes_FromStringAndSize(PyBytes_AS_STRING(*out) + 5,
                                                  PyBytes_GET_SIZE(*out) - 5));
        if (*out == NULL)
            return FAILED;
    }
    if (*out == NULL || PyBytes_GET_SIZE(*out) == 0)
        Py_XSETREF(*out, Py_NewRef(default_version));
    return GOT;
}

/* _int_arg within [low, high]: the value itself, or not sent */
static int read_integer(PyObject *arg, long long low, long long high, PyObject **out) {
    *out = NULL;
    if (is_null(arg))
        return GOT;
    PyObject *value = slot(arg, arg_value_at);
    if (!is_integer_type(arg) || !PyLong_Check(value))
        return LEAVE;
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (number == -1 && PyErr_Occurred())
        return FAILED;
    if (overflow || number < low || number > high)
        return LEAVE;
    *out = Py_NewRef(value);
    return GOT;
}

/* `_int_arg(...) or 0` */
static int read_integer_or_zero(PyObject *arg, long long high, PyObject **out) {
    int status = read_integer(arg, 0, high, out);
    if (status == GOT && (*out == NULL || PyObject_Not(*out) == 1))
        Py_XSETREF(*out, PyLong_FromLong(0)); /* a small int: never fails */
    return status;
}

/* _bool_arg: BOOL or an integer, truth as Python's; False when not sent */
static int read_flag(PyObject *arg, PyObject **out) {
    int truth = 0;
    if (!is_null(arg)) {
        if (!is_type(arg, T_BOOL_FALSE_) && !is_integer_type(arg))
            return LEAVE;
        truth = PyObject_IsTrue(slot(arg, arg_value_at));
        if (truth < 0)
            return FAILED;
    }
    *out = PyBool_FromLong(truth);
    return GOT;
}

/* _address_arg for an IPV4/IPV6 argument holding an address object (a v4 one mapped into v6
 * unmapped); an address sent as text is the Python parser's */
static int read_address(PyObject *arg, PyObject **out) {
    *out = NULL;
    if (is_null(arg))
        return GOT;
    PyObject *value = slot(arg, arg_value_at);
    if (!is_type(arg, T_IPV4_) && !is_type(arg, T_IPV6_))
        return LEAVE;
    if (PyObject_TypeCheck(value, ipv4_class)) {
        *out = Py_NewRef(value);
        return GOT;
    }
    if (!PyObject_TypeCheck(value, ipv6_class))
        return LEAVE;
    PyObject *mapped = PyObject_GetAttr(value, ipv4_mapped_name);
    if (mapped == NULL)
        return FAILED;
    *out = mapped == Py_None ? Py_NewRef(value) : Py_NewRef(mapped);
    Py_DECREF(mapped);
    return GOT;
}

/* _headers_arg: HeaderRecords of the packed block, () when not sent */
static int read_headers(PyObject *arg, PyObject **out) {
    *out = NULL;
    if (is_null(arg)) {
        *out = PyTuple_New(0);
        return *out == NULL ? FAILED : GOT;
    }
    PyObject *value = slot(arg, arg_value_at);
    records_reader read;
    if (is_type(arg, T_STRING_))
        read = text_header_records;
    else if (is_type(arg, T_BINARY_))
        read = binary_header_records;
    else
        return LEAVE;
    PyObject *packed = pack_header_block(value, read);
    if (packed == NULL)
        return FAILED;
    if (packed == Py_None) { /* not bytes, or a block the Python parser reads (or refuses) */
        Py_DECREF(packed);
        return LEAVE;
    }
    PyObject *records = header_records_type->tp_alloc(header_records_type, 0);
    if (records == NULL) {
        Py_DECREF(packed);
        return FAILED;
    }
    *(PyObject **)((char *)records + header_records_at) = packed;
    *out = records;
    return GOT;
}

/* an instance of `type` whose slots at `at` take `values` (new references, all set) */
static PyObject *record_of(PyTypeObject *type, const Py_ssize_t *at, PyObject **values,
                           int count) {
    PyObject *self = type->tp_alloc(type, 0);
    for (int index = 0; index < count; index++) {
        if (self != NULL)
            *(PyObject **)((char *)self + at[index]) = values[index];
        else
            Py_DECREF(values[index]);
    }
    return self;
}

static void clear_values(PyObject **values, int count) {
    for (int index = 0; index < count; index++)
        Py_CLEAR(values[index]);
}

static int messages_ready(void) {
    if (request_info_type != NULL && data_types[0] != NULL)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "_spop_fast.setup_messages() was not called");
    return 0;
}

/* read_request(message, new_id) -> RequestMessage | None */
static PyObject *read_request(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    (void)module;
    if (argc != 2) {
        PyErr_SetString(PyExc_TypeError, "read_request(message, new_id)");
        return NULL;
    }
    if (!messages_ready())
        return NULL;
    if (Py_TYPE(argv[0]) != message_type)
        Py_RETURN_NONE;
    PyObject *found[A_COUNT] = {NULL};
    if (collect_args(argv[0], found) != 0)
        Py_RETURN_NONE;
    PyObject *info[R_COUNT] = {NULL}, *flags[M_COUNT] = {NULL}, *given_id = NULL;
    int status = read_text(found[A_ID], &given_id);
    if (status == GOT)
        status = read_text_or(found[A_METHOD], default_method, &info[R_METHOD]);
    if (status == GOT)
        status = read_text_or(found[A_PATH], default_path, &info[R_PATH]);
    if (status == GOT)
        status = read_text(found[A_QUERY], &info[R_QUERY]);
    if (status == GOT)
        status = read_text(found[A_URL], &info[R_TARGET]);
    if (status == GOT)
        status = read_version(found[A_VERSION], &info[R_VERSION]);
    if (status == GOT)
        status = read_headers(found[A_HEADERS], &info[R_HEADERS]);
    if (status == GOT)
        status = read_text_or(found[A_BODY], no_bytes, &info[R_BODY]);
    if (status == GOT)
        status = read_address(found[A_SRC_IP], &info[R_SRC_IP]);
    if (status == GOT)
        status = read_integer_or_zero(found[A_SRC_PORT], 65535, &info[R_SRC_PORT]);
    if (status == GOT)
        status = read_address(found[A_DST_IP], &info[R_DST_IP]);
    if (status == GOT)
        status = read_integer_or_zero(found[A_DST_PORT], 65535, &info[R_DST_PORT]);
    if (status == GOT)
        status = read_integer(found[A_BODY_SIZE], 0, LLONG_MAX, &info[R_DECLARED_BODY_SIZE]);
    if (status == GOT)
        status = read_flag(found[A_EXPORT], &flags[M_EXPORT]);
    if (status == GOT)
        status = read_flag(found[A_DETECT], &flags[M_DETECT]);
    if (status == GOT) {
        /* last: an id is generated only for a message C reads */
        int generated = given_id == NULL || PyBytes_GET_SIZE(given_id) == 0;
        info[R_TRANSACTION_ID] =
            generated ? PyObject_CallNoArgs(argv[1])
                      : PyUnicode_DecodeLatin1(PyBytes_AS_STRING(given_id),
                                               PyBytes_GET_SIZE(given_id), NULL);
        flags[M_ID_GENERATED] = PyBool_FromLong(generated);
        if (info[R_TRANSACTION_ID] == NULL)
            status = FAILED;
    }
    Py_XDECREF(given_id);
    if (status != GOT) {
        clear_values(info, R_COUNT);
        clear_values(flags, M_COUNT);
        if (status == FAILED)
            return NULL;
        Py_RETURN_NONE;
    }
    /* "not sent" fields are None (query, target, addresses, body size) */
    for (int index = 0; index < R_COUNT; index++)
        if (info[index] == NULL)
            info[index] = Py_NewRef(Py_None);
    flags[M_INFO] = record_of(request_info_type, request_at, info, R_COUNT);
    if (flags[M_INFO] == NULL) {
        clear_values(flags, M_COUNT);
        return NULL;
    }
    return record_of(request_message_type, request_message_at, flags, M_COUNT);
}

/* read_response(message) -> ResponseMessage | None */
static PyObject *read_response(PyObject *module, PyObject *message) {
    (void)module;
    if (!messages_ready())
        return NULL;
    if (Py_TYPE(message) != message_type)
        Py_RETURN_NONE;
    PyObject *found[A_COUNT] = {NULL};
    if (collect_args(message, found) != 0)
        Py_RETURN_NONE;
    PyObject *info[S_COUNT] = {NULL}, *flags[M_COUNT - 1] = {NULL};
    int status = read_text(found[A_ID], &info[S_TRANSACTION_ID]);
    if (status == GOT)
        status = read_integer_or_zero(found[A_STATUS], 999, &info[S_STATUS]);
    if (status == GOT)
        status = read_version(found[A_VERSION], &info[S_VERSION]);
    if (status == GOT)
        status = read_headers(found[A_HEADERS], &info[S_HEADERS]);
    if (status == GOT)
        status = read_text_or(found[A_BODY], no_bytes, &info[S_BODY]);
    if (status == GOT)
        status = read_flag(found[A_EXPORT], &flags[M_EXPORT]);
    if (status == GOT)
        status = read_flag(found[A_DETECT], &flags[M_DETECT]);
    if (status == GOT) {
        /* an empty transaction_id: no id was sent */
        PyObject *given_id = info[S_TRANSACTION_ID];
        info[S_TRANSACTION_ID] =
            given_id == NULL ? Py_NewRef(no_text)
                             : PyUnicode_DecodeLatin1(PyBytes_AS_STRING(given_id),
                                                      PyBytes_GET_SIZE(given_id), NULL);
        Py_XDECREF(given_id);
        if (info[S_TRANSACTION_ID] == NULL)
            status = FAILED;
    }
    if (status != GOT) {
        clear_values(info, S_COUNT);
        clear_values(flags, M_COUNT - 1);
        if (status == FAILED)
            return NULL;
        Py_RETURN_NONE;
    }
    flags[M_INFO] = record_of(response_info_type, response_at, info, S_COUNT);
    if (flags[M_INFO] == NULL) {
        clear_values(flags, M_COUNT - 1);
        return NULL;
    }
    return record_of(response_message_type, response_message_at, flags, M_COUNT - 1);
}

/* the slot offsets of `fields`, which must be all of the class's slots */
static int record_offsets(PyTypeObject *type, const char *const *fields, int count,
                          Py_ssize_t *at) {
    PyObject *slots = PyObject_GetAttrString((PyObject *)type, "__slots__");
    if (slots == NULL)
        return -1;
    Py_ssize_t declared = PySequence_Size(slots);
    Py_DECREF(slots);
    if (declared != count) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s has %zd slots, _spop_fast knows %d",
                         type->tp_name, declared, count);
        return -1;
    }
    for (int index = 0; index < count; index++)
        if (slot_offset(type, fields[index], &at[index]) < 0)
            return -1;
    return 0;
}

/* setup_messages(Arg, Message, DataType, RequestInfo, ResponseInfo, RequestMessage,
 * ResponseMessage, HeaderRecords, IPv4Address, IPv6Address) */
static PyObject *setup_messages(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *arg, *message, *data_type, *request, *response, *request_message,
        *response_message, *records, *ipv4, *ipv6;
    if (!PyArg_ParseTuple(args, "O!O!OO!O!O!O!O!O!O!", &PyType_Type, &arg, &PyType_Type,
                          &message, &data_type, &PyType_Type, &request, &PyType_Type, &response,
                          &PyType_Type, &request_message, &PyType_Type, &response_message,
                          &PyType_Type, &records, &PyType_Type, &ipv4, &PyType_Type, &ipv6))
        return NULL;
    PyTypeObject *a = (PyTypeObject *)arg, *m = (PyTypeObject *)message;
    if (slot_offset(a, "name", &arg_name_at) < 0 || slot_offset(a, "type", &arg_type_at) < 0 ||
        slot_offset(a, "value", &arg_value_at) < 0 ||
        slot_offset(m, "name", &message_name_at) < 0 ||
        slot_offset(m, "args", &message_args_at) < 0 || load_data_types(data_type) < 0 ||
        record_offsets((PyTypeObject *)request, request_fields, R_COUNT, request_at) < 0 ||
        record_offsets((PyTypeObject *)response, response_fields, S_COUNT, response_at) < 0 ||
        record_offsets((PyTypeObject *)request_message, request_message_fields, M_COUNT,
                       request_message_at) < 0 ||
        record_offsets((PyTypeObject *)response_message, response_message_fields, M_COUNT - 1,
                       response_message_at) < 0 ||
        slot_offset((PyTypeObject *)records, "packed", &header_records_at) < 0)
        return NULL;
    if (default_method == NULL) {
        default_method = PyBytes_FromString("GET");
        default_path = PyBytes_FromString("/");
        default_version = PyBytes_FromString("1.1");
        no_bytes = PyBytes_FromString("");
        no_text = PyUnicode_FromString("");
        ipv4_mapped_name = PyUnicode_InternFromString("ipv4_mapped");
        if (default_method == NULL || default_path == NULL || default_version == NULL ||
            no_bytes == NULL || no_text == NULL || ipv4_mapped_name == NULL)
            return NULL;
    }
    Py_XSETREF(arg_type, (PyTypeObject *)Py_NewRef(arg));
    Py_XSETREF(message_type, (PyTypeObject *)Py_NewRef(message));
    Py_XSETREF(header_records_type, (PyTypeObject *)Py_NewRef(records));
    Py_XSETREF(ipv4_class, (PyTypeObject *)Py_NewRef(ipv4));
    Py_XSETREF(ipv6_class, (PyTypeObject *)Py_NewRef(ipv6));
    Py_XSETREF(request_message_type, (PyTypeObject *)Py_NewRef(request_message));
    Py_XSETREF(response_message_type, (PyTypeObject *)Py_NewRef(response_message));
    Py_XSETREF(response_info_type, (PyTypeObject *)Py_NewRef(response));
    Py_XSETREF(request_info_type, (PyTypeObject *)Py_NewRef(request));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(Arg, Message, Notify, DataType, ipv4_factory, ipv6_factory)"},
    {"next_notify", (PyCFunction)(void (*)(void))next_notify, METH_FASTCALL,
     "next_notify(buffer, offset, frame_limit) -> (Notify, next offset), or None"},
    {"decode_messages", decode_messages, METH_O,
     "decode_messages(payload) -> tuple of Message, or None: decode it in Python"},
    {"setup_actions", setup_actions, METH_VARARGS, "setup_actions(SetVar, UnsetVar)"},
    {"encode_ack", (PyCFunction)(void (*)(void))encode_ack, METH_FASTCALL,
     "encode_ack(stream_id, frame_id, actions) -> the ACK frame, or None: encode it in Python"},
    {"pack_text_header_block", pack_text_header_block, METH_O,
     "pack_text_header_block(block) -> msc_glue.c's header records, or None: parse it in Python"},
    {"pack_binary_header_block", pack_binary_header_block, METH_O,
     "pack_binary_header_block(block) -> msc_glue.c's header records, or None: parse it in Python"},
    {"read_rule_records", read_rule_records, METH_O,
     "read_rule_records(buffer) -> a tuple per rule-match record of msc_glue_rm.cc, or None: a "
     "read past the end"},
    {"setup_messages", setup_messages, METH_VARARGS,
     "setup_messages(Arg, Message, DataType, RequestInfo, ResponseInfo, RequestMessage, "
     "ResponseMessage, HeaderRecords, IPv4Address, IPv6Address)"},
    {"read_request", (PyCFunction)(void (*)(void))read_request, METH_FASTCALL,
     "read_request(message, new_id) -> messages.RequestMessage, or None: parse it in Python"},
    {"read_response", read_response, METH_O,
     "read_response(message) -> messages.ResponseMessage, or None: parse it in Python"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "coraza_spoa_py._spop_fast",
    "SPOP NOTIFY decoding, ACK encoding, header block packing and rule-match record reading in C "
    "(spop_native.py, header_blocks.py, engine/matches.py)", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spop_fast(void) { return PyModule_Create(&module_def); }
