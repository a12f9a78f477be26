"""Build ``coraza_spoa_py/_msc*.so``: our cffi binding (API mode) of libmodsecurity plus the
glue of ``msc_glue.c``. ``make install`` runs it (``python -m coraza_spoa_py.native.build``);
it needs gcc and the Python headers, never libmodsecurity-dev.

Why compiled (docs/performance.md "Native glue"): a phase group is one C call that releases
the GIL once, where the ABI-mode binding made one GIL round trip per engine step and header.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from cffi import FFI

PACKAGE_DIR = Path(__file__).resolve().parent.parent
GLUE = Path(__file__).resolve().parent / "msc_glue.c"
MODULE = "coraza_spoa_py._msc"

# The subset of /usr/include/modsecurity/{modsecurity,rules_set,transaction,intervention}.h we
# call (engine.md "The C API we need"), plus the glue. Opaque handles are void*.
CDEF = """
typedef struct ModSecurityIntervention_t {
    int status;
    int pause;
    char *url;
    char *log;
    int disruptive;
} ModSecurityIntervention;

void *msc_init(void);
const char *msc_who_am_i(void *msc);
void msc_set_connector_info(void *msc, const char *connector);

void *msc_create_rules_set(void);
int msc_rules_add(void *rules, const char *plain_rules, const char **error);
int msc_rules_cleanup(void *rules);

void *msc_new_transaction_with_id(void *ms, void *rules, char *id, void *logCbData);

typedef struct cs_log {
    unsigned char *buf;
    size_t len;
    size_t cap;
    int phase;
} cs_log;

typedef struct cs_outcome {
    int disruptive;
    int phase;
    int status;
    char *url;
    char *log;
} cs_outcome;

void cs_install_log_callback(void *msc);
void cs_log_free(cs_log *log);
void cs_outcome_clear(cs_outcome *out);
int cs_process_request(void *tx, cs_log *log, const char *client_ip, int client_port,
                       const char *server_ip, int server_port, const char *uri,
                       const char *method, const char *version,
                       const unsigned char *headers, size_t headers_len,
                       const unsigned char *body, size_t body_len, cs_outcome *out);
int cs_process_response(void *tx, cs_log *log, int status, const char *protocol,
                        const unsigned char *headers, size_t headers_len,
                        const unsigned char *body, size_t body_len, cs_outcome *out);
void cs_close(void *tx, cs_log *log);

typedef struct cs_job {
    int kind;
    void *tx;
    void *msc;
    void *rules;
    char *id;
    cs_log *log;
    const char *client_ip;
    int client_port;
    const char *server_ip;
    int server_port;
    const char *uri;
    const char *method;
    const char *version;
    int status;
    const char *protocol;
    const char *headers;
    size_t headers_len;
    const char *body;
    size_t body_len;
    double deadline;
    unsigned long long token;
    int interrupted;
    int shed;
    int failed;
    double pushed_at;
    double started_at;
    double finished_at;
    int work_waiting;
    cs_outcome out;
    struct cs_job *next;
} cs_job;

typedef struct cs_pool cs_pool;
#define CS_REQUEST 1
#define CS_RESPONSE 2
#define CS_CLOSE 3

double cs_monotonic(void);
void cs_job_run(cs_job *job);
cs_pool *cs_pool_new(void);
int cs_pool_fd(cs_pool *pool);
int cs_pool_resize(cs_pool *pool, int threads);
void cs_pool_submit(cs_pool *pool, cs_job *job, int urgent);
size_t cs_pool_waiting(cs_pool *pool, int urgent_only);
cs_job *cs_pool_take_done(cs_pool *pool);
void cs_pool_stop(cs_pool *pool);

void free(void *ptr);
"""


def builder() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        MODULE,
        GLUE.read_text(encoding="utf-8"),
        # Debian's libmodsecurity3 ships only libmodsecurity.so.3 (the .so symlink is in -dev)
        extra_link_args=["-l:libmodsecurity.so.3"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
    )
    return ffi


def build() -> Path:
    """Compile and place the module next to the package's sources; returns its path."""
    with tempfile.TemporaryDirectory(prefix="coraza-spoa-py-build-") as tmp:
        built = Path(builder().compile(tmpdir=tmp, verbose=False))
        target = PACKAGE_DIR / built.name
        # a new file renamed over the old one: a running agent keeps its mapping intact
        staged = target.with_name(target.name + ".new")
        shutil.copyfile(built, staged)
        staged.replace(target)
    return target


if __name__ == "__main__":
    sys.stderr.write(f"built {build()}\n")
