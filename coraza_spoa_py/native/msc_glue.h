/* The interface of msc_glue.c and msc_glue_rm.cc: the libmodsecurity C prototypes msc_glue.c
 * calls, the structs Python fills and reads, and the functions it calls. build.py feeds this
 * file to cffi's cdef as well, so the two can never disagree. Nothing here but declarations
 * cdef can parse (no macros; the '#' lines are dropped for it). The C++ file includes
 * libmodsecurity's own headers instead of the prototypes (C++ refuses two declarations of one
 * C function with different pointer types). */
#ifndef CORAZA_SPOA_PY_MSC_GLUE_H
#define CORAZA_SPOA_PY_MSC_GLUE_H
#include <stddef.h>

#ifndef __cplusplus

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
int msc_process_connection(void *t, const char *client, int cPort, const char *server, int sPort);
int msc_process_uri(void *t, const char *uri, const char *protocol, const char *http_version);
int msc_add_n_request_header(void *t, const unsigned char *key, size_t len_key,
                             const unsigned char *value, size_t len_value);
int msc_process_request_headers(void *t);
int msc_append_request_body(void *t, const unsigned char *body, size_t size);
int msc_process_request_body(void *t);
int msc_add_n_response_header(void *t, const unsigned char *key, size_t len_key,
                              const unsigned char *value, size_t len_value);
int msc_process_response_headers(void *t, int code, const char *protocol);
int msc_append_response_body(void *t, const unsigned char *body, size_t size);
int msc_process_response_body(void *t);
int msc_process_logging(void *t);
int msc_intervention(void *t, ModSecurityIntervention *it);
void msc_transaction_cleanup(void *t);
#endif

/* What action the rule that made a disruptive rule message ran (msc_glue_rm.cc, from the rule's
 * actions, SecDefaultAction for `block`, SecRuleUpdateActionById); NONE for other messages */
enum { CS_ACTION_NONE = 0, CS_ACTION_DENY = 1, CS_ACTION_DROP = 2, CS_ACTION_REDIRECT = 3,
       CS_ACTION_OTHER = 4 };

/* The rule matches of one transaction since the hub last read them, copied from the engine's
 * rule messages (msc_glue_rm.cc) after every engine step. One record per message, integers
 * little endian, each string as [length: u32][bytes]:
 *   rule id: i64; line, phase, severity, maturity, accuracy, action (CS_ACTION_*): u32 each;
 *   file, msg, data (first 200 bytes), rev, ver, server address, uri (path, first 200 bytes),
 *   raw (the engine's text line, for display only): strings; tag count: u32; the tags: strings.
 * waf.py reads them (_match_records). One per transaction; it is also the transaction's log
 * callback data, which the callback (a no-op: msc_glue_rm.cc copies the messages) ignores. */
typedef struct cs_log {
    unsigned char *buf;
    size_t len;
    size_t cap;
    size_t seen; /* the transaction's rule messages already copied */
} cs_log;

typedef struct cs_outcome {
    int disruptive;
    int phase;
    int status;
    int body_limit;       /* the intervention came from a body limit, not from a rule */
    long long anomaly_score; /* TX's inbound score after a request group; -1: not set */
    char *url; /* malloc'd by the engine; the caller hands them back (cs_job_release) */
    char *log;
} cs_outcome;

enum { CS_REQUEST = 1, CS_RESPONSE = 2, CS_CLOSE = 3 };
/* whether a request or response job also closes its transaction when it is done (the close
 * would otherwise be a job of its own: docs/performance.md change 13) */
enum { CS_CLOSE_NEVER = 0, CS_CLOSE_ALWAYS = 1, CS_CLOSE_IF_INTERRUPTED = 2 };

/* an engine thread's place in the pool (msc_glue.c) */
typedef struct cs_slot cs_slot;

typedef struct cs_job {
    /* set by the caller */
    int kind;
    void *tx;     /* NULL: the job creates the transaction (from msc, rules, id) first */
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
    double deadline; /* CLOCK_MONOTONIC seconds, 0 = none: not started by then -> shed */
    int close_when;  /* CS_CLOSE_*; a close keeps the log's lines for the caller to read */
    unsigned long long token;
    int prefer; /* urgent jobs: the ran_on of this transaction's previous job, 0 = any thread */
    /* set when it ran */
    int ran_on; /* the engine thread (its index + 1) that took it; 0: not run by the pool */
    cs_slot *ran_by; /* that thread's slot (cs_job_release); NULL: not run by the pool */
    int interrupted;
    int closed; /* close_when applied: the transaction is gone (tx is NULL again) */
    int shed;
    int failed; /* the transaction could not be created */
    double pushed_at;
    double started_at;
    double finished_at;
    int work_waiting; /* jobs were still queued when this one finished */
    cs_outcome out;
    struct cs_job *next;
} cs_job;

/* A request's or a response's fields of a job in one call (docs/performance.md change 50):
 * set one by one through cffi, a copy and an attribute write per string, they cost ~6 us of
 * the hub per request. The strings are the caller's own (Python bytes, which cffi passes
 * without a copy and which end with a NUL): it keeps them alive until the job has run. */
void cs_job_set_request(cs_job *job, const char *client_ip, int client_port,
                        const char *server_ip, int server_port, const char *uri,
                        const char *method, const char *version, const char *headers,
                        size_t headers_len, const char *body, size_t body_len);
void cs_job_set_response(cs_job *job, int status, const char *protocol, const char *headers,
                         size_t headers_len, const char *body, size_t body_len);

typedef struct cs_pool cs_pool;

void cs_install_log_callback(void *msc);
void cs_read_messages(void *tx, cs_log *log, int disruptive_status);
/* Whether rule-match records carry the engine's text line (`raw`, RuleMessage::log): only the
 * rule-match log reads it, so with no log sink taking a record's level (log_level disabled,
 * fatal or panic) it is not formatted at all (docs/performance.md change 54). On by default;
 * process-wide, read by the engine threads at each record. */
void cs_set_match_text(int on);
long long cs_anomaly_score(void *tx);
void cs_log_free(cs_log *log);
int cs_process_request(void *tx, cs_log *log, const char *client_ip, int client_port,
                       const char *server_ip, int server_port, const char *uri,
                       const char *method, const char *version,
                       const unsigned char *headers, size_t headers_len,
                       const unsigned char *body, size_t body_len, cs_outcome *out);
int cs_process_response(void *tx, cs_log *log, int status, const char *protocol,
                        const unsigned char *headers, size_t headers_len,
                        const unsigned char *body, size_t body_len, cs_outcome *out);
void cs_close(void *tx);

void cs_job_run(cs_job *job);
void cs_job_release(cs_job *job);
cs_pool *cs_pool_new(void);
int cs_pool_fd(cs_pool *pool);
int cs_pool_resize(cs_pool *pool, int threads);
void cs_pool_push(cs_pool *pool, cs_job *job, int urgent);
void cs_pool_wake(cs_pool *pool);
size_t cs_pool_waiting(cs_pool *pool);
cs_job *cs_pool_take_done(cs_pool *pool);
void cs_pool_set_batching(cs_pool *pool, int batch, double delay_s);
void cs_pool_stop(cs_pool *pool);
size_t cs_pool_handed_back(cs_pool *pool);
size_t cs_pool_handed_back_total(cs_pool *pool);

int cs_trim_heap(void);

#endif
