/* The engine glue: one C call per phase group instead of one cffi call per engine step.
 *
 * Why (docs/performance.md, changes 7 and 8): every cffi call releases and retakes the GIL. With
 * ~30 calls per transaction (one per header) each engine thread handed the GIL back and forth
 * with the gevent hub ~60 times per HTTP request, and the handoffs (futex wake-ups, context
 * switches on 2 cores) cost more CPU than the agent's own Python. Here a phase group is one
 * call that releases the GIL once, and the engine's rule messages are copied in C++
 * (msc_glue_rm.cc) instead of calling back into Python (a callback retakes the GIL for every
 * matched rule).
 *
 * The behaviour is the one waf.py documents (docs/engine.md "The C API we call"): one engine step
 * at a time, an intervention check after each, the first disruptive intervention ends the
 * group. This file needs no libmodsecurity header: the C prototypes it calls are in msc_glue.h,
 * which build.py also hands to cffi's cdef. msc_glue_rm.cc reads the engine's C++ RuleMessage
 * and needs libmodsecurity-dev's headers.
 */
#pragma GCC diagnostic error "-Wimplicit-function-declaration"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "msc_glue.h"


void cs_log_free(cs_log *log) {
    free(log->buf);
    log->buf = NULL;
    log->len = log->cap = 0;
}

/* After each engine step (docs/engine.md "Engine facts"): status reset to 200 before asking,
 * url/log freed after unless the intervention is disruptive (then the outcome owns them); the step's rule messages
 * copied into the log (the disruptive one's text line with the intervention's status). */
static int cs_intervened(void *tx, cs_log *log, int phase, cs_outcome *out) {
    ModSecurityIntervention it = {200, 0, NULL, NULL, 0};
    msc_intervention(tx, &it);
    cs_read_messages(tx, log, it.status);
    if (!it.disruptive) {
        free(it.url);
        free(it.log);
        return 0;
    }
    out->disruptive = 1;
    out->phase = phase;
    out->status = it.status;
    out->url = it.url;
    out->log = it.log;
    return 1;
}

static uint32_t cs_read_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* headers: records of [name length: 4 bytes LE][name][value length: 4 bytes LE][value], as
 * waf.py packs them; a truncated record ends the list (it cannot happen from waf.py). */
typedef int (*cs_add_header)(void *, const unsigned char *, size_t, const unsigned char *, size_t);

static void cs_add_headers(void *tx, cs_add_header add, const unsigned char *h, size_t n) {
    size_t at = 0;
    while (at + 4 <= n) {
        uint32_t name_len = cs_read_u32(h + at);
        at += 4;
        if (name_len > n - at || n - at - name_len < 4) {
            return;
        }
        const unsigned char *name = h + at;
        at += name_len;
        uint32_t value_len = cs_read_u32(h + at);
        at += 4;
        if (value_len > n - at) {
            return;
        }
        add(tx, name, name_len, h + at, value_len);
        at += value_len;
    }
}

typedef int (*cs_append_body)(void *tx, const unsigned char *body, size_t size);
typedef int (*cs_process_body)(void *tx);

/* Phase 2 or 4: the body, then the phase's rules. Returns 1 when a disruptive intervention
 * ended it. */
static int cs_body_phase(void *tx, cs_log *log, cs_append_body append, cs_process_body process,
                         int phase, const unsigned char *body, size_t body_len, cs_outcome *out) {
    if (body_len > 0) {
        /* the body limit (Sec*BodyLimitAction Reject) intervenes right after the append, and
         * msc_process_*_body would forget it; no rule runs in an append */
        append(tx, body, body_len);
        if (cs_intervened(tx, log, phase, out)) {
            out->body_limit = 1;
            return 1;
        }
    }
    /* the phase runs even without a body: CRS scores and blocks there (949110, 959100) */
    process(tx);
    return cs_intervened(tx, log, phase, out);
}

/* Phases 1 and 2. Returns 1 when a disruptive intervention ended the group. */
static int cs_request_phases(void *tx, cs_log *log, const char *client_ip, int client_port,
                       const char *server_ip, int server_port, const char *uri,
                       const char *method, const char *version,
                       const unsigned char *headers, size_t headers_len,
                       const unsigned char *body, size_t body_len, cs_outcome *out) {
    msc_process_connection(tx, client_ip, client_port, server_ip, server_port);
    if (cs_intervened(tx, log, 1, out)) {
        return 1;
    }
    /* the library prefixes the version with "HTTP/" itself (REQUEST_PROTOCOL) */
    msc_process_uri(tx, uri, method, version);
    if (cs_intervened(tx, log, 1, out)) {
        return 1;
    }
    cs_add_headers(tx, msc_add_n_request_header, headers, headers_len);
    msc_process_request_headers(tx);
    if (cs_intervened(tx, log, 1, out)) {
        return 1;
    }
    return cs_body_phase(tx, log, msc_append_request_body, msc_process_request_body, 2, body,
                         body_len, out);
}

int cs_process_request(void *tx, cs_log *log, const char *client_ip, int client_port,
                       const char *server_ip, int server_port, const char *uri,
                       const char *method, const char *version,
                       const unsigned char *headers, size_t headers_len,
                       const unsigned char *body, size_t body_len, cs_outcome *out) {
    memset(out, 0, sizeof *out);
    int interrupted = cs_request_phases(tx, log, client_ip, client_port, server_ip, server_port,
                                        uri, method, version, headers, headers_len, body,
                                        body_len, out);
    /* CRS's inbound score where the request phases ended (TX, docs/engine.md) */
    out->anomaly_score = cs_anomaly_score(tx);
    return interrupted;
}

/* Phases 3 and 4. */
int cs_process_response(void *tx, cs_log *log, int status, const char *protocol,
                        const unsigned char *headers, size_t headers_len,
                        const unsigned char *body, size_t body_len, cs_outcome *out) {
    memset(out, 0, sizeof *out);
    out->anomaly_score = -1;
    cs_add_headers(tx, msc_add_n_response_header, headers, headers_len);
    /* here the library takes the protocol as given (RESPONSE_PROTOCOL) */
    msc_process_response_headers(tx, status, protocol);
    if (cs_intervened(tx, log, 3, out)) {
        return 1;
    }
    return cs_body_phase(tx, log, msc_append_response_body, msc_process_response_body, 4, body,
                         body_len, out);
}

/* The logging phase (audit log), then free the native transaction. Its rule messages are not
 * read: nobody reports them. */
void cs_close(void *tx) {
    msc_process_logging(tx);
    msc_transaction_cleanup(tx);
}

/* ---- jobs and the engine thread pool ------------------------------------------------------
 *
 * Why a pool in C (docs/performance.md, changes 7 and 8): engine threads that run Python hand the
 * GIL back and forth with the gevent hub; measured, those handoffs cost more CPU than the
 * engine calls they wrap. These threads never touch Python: the hub fills a job, submits it,
 * and learns of its end through an eventfd that its libev loop watches. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>


static double cs_monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* the clock of Python's time.monotonic() */
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* The logging phase and the free of a request or response job's transaction, when the caller
 * asked for it. The matches of phases 1-4 stay in the log for the caller; phase 5's are never
 * read, as a close job's are not (nobody reports them). */
static void cs_close_after(cs_job *job) {
    int wanted = job->close_when == CS_CLOSE_ALWAYS ||
                 (job->close_when == CS_CLOSE_IF_INTERRUPTED && job->interrupted);
    if (!wanted) {
        return;
    }
    if (job->tx != NULL) {
        cs_close(job->tx);
        job->tx = NULL;
    }
    job->closed = 1;
}

/* Here rather than on the hub: the constructor allocates the whole transaction. */
static int cs_create_transaction(cs_job *job) {
    job->tx = msc_new_transaction_with_id(job->msc, job->rules, job->id, job->log);
    return job->tx != NULL;
}

void cs_job_set_request(cs_job *job, const char *client_ip, int client_port,
                        const char *server_ip, int server_port, const char *uri,
                        const char *method, const char *version, const char *headers,
                        size_t headers_len, const char *body, size_t body_len) {
    job->client_ip = client_ip;
    job->client_port = client_port;
    job->server_ip = server_ip;
    job->server_port = server_port;
    job->uri = uri;
    job->method = method;
    job->version = version;
    job->headers = headers;
    job->headers_len = headers_len;
    job->body = body;
    job->body_len = body_len;
}

void cs_job_set_response(cs_job *job, int status, const char *protocol, const char *headers,
                         size_t headers_len, const char *body, size_t body_len) {
    job->status = status;
    job->protocol = protocol;
    job->headers = headers;
    job->headers_len = headers_len;
    job->body = body;
    job->body_len = body_len;
}

void cs_job_run(cs_job *job) {
    job->started_at = cs_monotonic();
    if (job->kind == CS_CLOSE) {
        if (job->tx != NULL) {
            cs_close(job->tx);
        }
        /* nobody reads the log any more; freeing the buffer here keeps the free() (and the
         * malloc arena lock it may wait for: the buffer grew on an engine thread) off the hub */
        cs_log_free(job->log);
        job->finished_at = cs_monotonic();
        return;
    }
    if (job->deadline > 0 && job->started_at > job->deadline) {
        job->shed = 1; /* issue 6: a message that waited past the budget is not evaluated */
    } else if (job->tx == NULL && !cs_create_transaction(job)) {
        job->failed = 1;
    } else if (job->kind == CS_REQUEST) {
        job->interrupted = cs_process_request(
            job->tx, job->log, job->client_ip, job->client_port, job->server_ip,
            job->server_port, job->uri, job->method, job->version,
            (const unsigned char *)job->headers, job->headers_len,
            (const unsigned char *)job->body, job->body_len, &job->out);
    } else if (job->kind == CS_RESPONSE) {
        job->interrupted = cs_process_response(
            job->tx, job->log, job->status, job->protocol, (const unsigned char *)job->headers,
            job->headers_len, (const unsigned char *)job->body, job->body_len, &job->out);
    }
    cs_close_after(job);
    job->finished_at = cs_monotonic();
}

typedef struct cs_lane {
    cs_job *head;
    cs_job *tail;
    size_t count;
} cs_lane;

/* Transaction affinity (docs/performance.md change 40): libmodsecurity allocates a transaction
 * on the malloc arena of the thread that creates it, and a free() from another thread takes
 * that arena's lock, where the thread that owns it may be allocating (measured: ~2,000 futex
 * waits on arena locks per 2 s under load). So a transaction's later urgent jobs (its response
 * phases, its close) go to the lane of the thread that ran its previous job, and wait for that
 * thread at most CS_STEAL_AFTER_S; after that any thread takes them (a thread busy for long,
 * e.g. a slow rule, must not hold a response back). Each thread has its own condition, so a job
 * wakes the thread it waits for and no other. */
#define CS_STEAL_AFTER_S 0.002
/* cs_finished (docs/performance.md change 41); engine_pool's timer uses the same delay */
#define CS_DONE_BATCH 16
#define CS_DONE_DELAY_S 0.001

struct cs_pool;

typedef struct cs_slot {
    struct cs_pool *pool;
    int index;
    pthread_cond_t wake; /* only this slot's thread waits on it */
    cs_lane mine;        /* urgent jobs that prefer this thread */
    atomic_int alive;    /* a thread runs with this index (set under the lock; cs_job_release
                          * reads it without) */
    int idle;            /* its thread waits for work */
    int signalled;       /* woken (cs_signal) and not yet running */
    int watching;        /* its wait ends by itself when a job of a busy thread may be taken */
    /* blocks its jobs left that the caller is done with, for this thread to free: a stack
     * linked through the blocks' first bytes (cs_job_release) */
    _Atomic(void *) handed_back;
} cs_slot;

typedef struct cs_pool {
    pthread_mutex_t lock;
    pthread_cond_t thread_gone;
    cs_lane urgent; /* responses and closes: their request already cost engine time */
    cs_lane normal;
    cs_lane done;
    cs_slot **slots; /* by thread index; never freed nor moved (a thread waits on its own) */
    int slot_count;
    size_t preferred; /* jobs in the slots' lanes, all threads */
    int threads;      /* running */
    int target;       /* wanted; a thread above it exits when it next looks for work */
    int idle;         /* threads waiting for work */
    int waking;       /* of those, signalled and not yet running (cs_wake_one) */
    int watching;     /* of those, waiting with a time-out for a busy thread's job */
    int running;      /* threads running a job */
    int fd;           /* eventfd: written once per batch of done jobs (cs_finished) */
    int notified;     /* the eventfd was written since the hub last took the done jobs */
    double done_since; /* when the oldest done job finished */
    size_t done_batch; /* cs_finished; cs_pool_set_batching */
    double done_delay_s;
    int exiting; /* threads that retired and still free what was handed back to them */
    atomic_size_t handed_back; /* blocks handed back and not freed yet, every slot */
    atomic_size_t handed_back_total; /* blocks ever handed back to a thread (tests) */
} cs_pool;

static void cs_lane_push(cs_lane *lane, cs_job *job) {
    job->next = NULL;
    if (lane->tail) {
        lane->tail->next = job;
    } else {
        lane->head = job;
    }
    lane->tail = job;
    lane->count++;
}

static cs_job *cs_lane_pop(cs_lane *lane) {
    cs_job *job = lane->head;
    if (job) {
        lane->head = job->next;
        if (!lane->head) {
            lane->tail = NULL;
        }
        lane->count--;
        job->next = NULL;
    }
    return job;
}

static size_t cs_queued(cs_pool *pool) {
    return pool->urgent.count + pool->normal.count + pool->preferred;
}

/* With the lock held. */
static void cs_signal(cs_pool *pool, cs_slot *slot, int to_watch) {
    slot->signalled = 1;
    pool->waking++;
    if (to_watch && !slot->watching) {
        /* counted from now: no second thread is sent to watch meanwhile */
        slot->watching = 1;
        pool->watching++;
    }
    pthread_cond_signal(&slot->wake);
}

/* Signal one idle thread if a queued job has no thread on its way yet. With the lock held.
 * Why count the signalled threads (docs/performance.md change 25): a SCHED_BATCH thread that
 * was signalled still counts as idle until the scheduler runs it, so the hub's next wake, a
 * loop turn later, signalled it again: a futex system call per turn for nothing. One signal
 * per call: the thread that runs wakes the next one (cs_worker). In order: a sleeping thread
 * that a job prefers; an idle thread for a job of the shared lanes that no signalled thread
 * will take; an idle thread to watch for the steal time of a job whose thread is busy, when no
 * thread watches yet (change 40). */
static void cs_wake_one(cs_pool *pool) {
    if (pool->idle <= pool->waking) {
        return; /* every idle thread is on its way already */
    }
    int for_shared = 0; /* signalled threads that will take a shared job: theirs are empty */
    int owner_busy = 0;
    cs_slot *spare = NULL;
    for (int i = 0; i < pool->slot_count; i++) {
        cs_slot *slot = pool->slots[i];
        if (!slot->alive) {
            continue;
        }
        if (slot->mine.count > 0) {
            if (slot->idle && !slot->signalled) {
                cs_signal(pool, slot, 0);
                return;
            }
            owner_busy |= !slot->idle;
        } else if (slot->signalled) {
            for_shared++;
        } else if (slot->idle && spare == NULL) {
            spare = slot;
        }
    }
    if (spare == NULL) {
        return;
    }
    if (pool->urgent.count + pool->normal.count > (size_t)for_shared) {
        cs_signal(pool, spare, 0);
    } else if (owner_busy && pool->watching == 0) {
        cs_signal(pool, spare, 1);
    }
}

/* A job for this thread, with the lock held: its own lane first, then the shared lanes, then
 * the oldest job that another thread has left waiting past CS_STEAL_AFTER_S. When there is none
 * but other threads' lanes hold jobs, *ripe_at says when the first may be taken. */
static cs_job *cs_take(cs_pool *pool, cs_slot *me, double *ripe_at) {
    cs_job *job = cs_lane_pop(&me->mine);
    if (job) {
        pool->preferred--;
        return job;
    }
    job = cs_lane_pop(&pool->urgent);
    if (!job) {
        job = cs_lane_pop(&pool->normal);
    }
    *ripe_at = 0;
    if (job || pool->preferred == 0) {
        return job;
    }
    cs_slot *oldest = NULL;
    for (int i = 0; i < pool->slot_count; i++) {
        cs_slot *slot = pool->slots[i];
        if (slot != me && slot->mine.head &&
            (!oldest || slot->mine.head->pushed_at < oldest->mine.head->pushed_at)) {
            oldest = slot;
        }
    }
    if (!oldest) {
        return NULL;
    }
    double ripe = oldest->mine.head->pushed_at + CS_STEAL_AFTER_S;
    if (cs_monotonic() < ripe) {
        *ripe_at = ripe;
        return NULL;
    }
    pool->preferred--;
    return cs_lane_pop(&oldest->mine);
}

/* Wait for work on this thread's own condition, with the lock held; until ripe_at (the steal
 * time of a job another thread holds back) when it is set. */
static void cs_wait(cs_pool *pool, cs_slot *me, double ripe_at) {
    me->idle = 1;
    pool->idle++;
    if (ripe_at > 0) {
        if (!me->watching) {
            me->watching = 1;
            pool->watching++;
        }
        struct timespec until;
        until.tv_sec = (time_t)ripe_at;
        until.tv_nsec = (long)((ripe_at - (double)until.tv_sec) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        (void)pthread_cond_timedwait(&me->wake, &pool->lock, &until);
    } else {
        pthread_cond_wait(&me->wake, &pool->lock);
    }
    me->idle = 0;
    pool->idle--;
    if (me->watching) {
        me->watching = 0;
        pool->watching--;
    }
    /* a spurious wake-up, or a time-out while signalled, leaves the flag set until the signal
     * lands: one signal too many later, never one missing */
    if (me->signalled) {
        me->signalled = 0;
        pool->waking--;
    }
}

/* A retiring thread's jobs go to the shared lane (ahead of requests, as they were). */
static void cs_retire(cs_pool *pool, cs_slot *me) {
    cs_job *job;
    while ((job = cs_lane_pop(&me->mine)) != NULL) {
        pool->preferred--;
        cs_lane_push(&pool->urgent, job);
    }
    me->alive = 0;
    pool->threads--;
    cs_wake_one(pool);
}

/* Finished jobs reach the hub in batches (docs/performance.md change 41): each eventfd write
 * wakes the hub for one loop turn (an epoll return, a read, a take), and one per job woke it
 * ~1.7 times per transaction. With the lock held, after job joined the done lane: whether this
 * thread writes the eventfd now. It does once the lane holds done_batch jobs, once its oldest
 * has waited done_delay_s, or when no job runs or waits any more (no later completion would
 * carry this one: the last is never held back). Otherwise a later completion, or the hub's own
 * timer of done_delay_s (engine_pool), delivers it: a job finished beside a long one waits
 * done_delay_s at most, never for the long one. */
static int cs_finished(cs_pool *pool, cs_job *job) {
    cs_lane_push(&pool->done, job);
    if (pool->done.count == 1) {
        pool->done_since = job->finished_at;
    }
    if (pool->notified) {
        return 0; /* the hub is on its way: it takes the whole lane */
    }
    int due = pool->done.count >= pool->done_batch || pool->running + cs_queued(pool) == 0 ||
              job->finished_at - pool->done_since >= pool->done_delay_s;
    pool->notified = due;
    return due;
}

/* ---- memory the caller hands back ------------------------------------------------------------
 *
 * Why (docs/performance.md change 44): what a job leaves for its caller, the intervention's url
 * and log strings and, once the job closed the transaction, its log buffer, was allocated on the
 * engine thread that ran it, in that thread's malloc arena. The hub freed it after reading it,
 * and a free() of a block from another thread's arena takes that arena's lock, which its owner
 * takes for every allocation of its next job: measured, the hub slept 10-20 us per blocked
 * request in those two calls on average, for ~2 us of work (a wait of milliseconds when the
 * owner was off its CPU holding the lock), and the owner waited on the hub's frees in turn. So
 * the caller hands the blocks back to the thread (cs_job_release): a push onto a stack of the
 * thread's slot, without a lock, linked through the blocks' own first bytes (nothing is
 * allocated for it), and the thread frees them before its next job, in its own arena, or when
 * it exits. A block of a job the pool did not run, one too small to hold the link, and one
 * handed to a thread that is gone are freed by the caller as before. */

/* Free a chain of blocks linked through their first bytes; how many there were. */
static size_t cs_free_chain(void *block) {
    size_t freed = 0;
    while (block != NULL) {
        void *next;
        memcpy(&next, block, sizeof next);
        free(block);
        block = next;
        freed++;
    }
    return freed;
}

/* Free every block handed back to slot (any thread may; each block goes once). */
static void cs_free_handed_back(cs_slot *slot) {
    size_t freed = cs_free_chain(atomic_exchange(&slot->handed_back, NULL));
    if (freed > 0) {
        atomic_fetch_sub(&slot->pool->handed_back, freed);
    }
}

/* A chain being built: its ends and its length. */
typedef struct cs_chain {
    void *first, *last;
    size_t count;
} cs_chain;

/* Link block (size bytes, or NULL) to the chain, or free it at once when it cannot carry the
 * link. */
static void cs_chain_add(cs_chain *chain, void *block, size_t size) {
    if (block == NULL) {
        return;
    }
    if (size < sizeof(void *)) {
        free(block);
        return;
    }
    void *none = NULL;
    memcpy(block, &none, sizeof none);
    if (chain->last != NULL) {
        memcpy(chain->last, &block, sizeof block);
    } else {
        chain->first = block;
    }
    chain->last = block;
    chain->count++;
}

/* What job left for its caller, once the caller has read it: the outcome's url and log, and
 * when the job closed the transaction, the log buffer (cleared for reuse). Handed back to the
 * thread that ran the job (the note above); any thread may call this, once per job. */
void cs_job_release(cs_job *job) {
    cs_chain chain = {NULL, NULL, 0};
    char *url = job->out.url, *text = job->out.log;
    job->out.url = job->out.log = NULL;
    cs_chain_add(&chain, url, url ? strlen(url) + 1 : 0);
    cs_chain_add(&chain, text, text ? strlen(text) + 1 : 0);
    if (job->closed && job->log != NULL) {
        cs_chain_add(&chain, job->log->buf, job->log->cap);
        job->log->buf = NULL;
        job->log->len = job->log->cap = 0;
    }
    if (chain.first == NULL) {
        return;
    }
    cs_slot *slot = job->ran_by;
    if (slot == NULL) { /* not run by the pool: this thread's own, or unknown */
        cs_free_chain(chain.first);
        return;
    }
    cs_pool *pool = slot->pool;
    /* counted first: the thread may free them as soon as they are pushed */
    atomic_fetch_add(&pool->handed_back, chain.count);
    atomic_fetch_add(&pool->handed_back_total, chain.count);
    void *head = atomic_load(&slot->handed_back);
    do {
        memcpy(chain.last, &head, sizeof head);
    } while (!atomic_compare_exchange_weak(&slot->handed_back, &head, chain.first));
    /* A thread that retires clears alive, then frees its stack (cs_worker); both sequentially
     * consistent, so either that free saw this push or this load sees the thread gone and
     * frees the stack here: nothing is stranded on a slot without a thread. */
    if (!atomic_load(&slot->alive)) {
        cs_free_handed_back(slot);
    }
}

static void *cs_worker(void *arg) {
    cs_slot *me = (cs_slot *)arg;
    cs_pool *pool = me->pool;
    /* CPU-bound work (sched(7) SCHED_BATCH): a thread woken for a job then waits for the
     * scheduler's next decision instead of preempting the thread that woke it, i.e. the hub,
     * which has the next messages to decode and submit (docs/performance.md change 15). Best
     * effort: without it the pool works the same, only with more context switches. */
    struct sched_param batch = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch);
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        if (pool->threads > pool->target) {
            break;
        }
        double ripe_at;
        cs_job *job = cs_take(pool, me, &ripe_at);
        if (!job) {
            cs_wait(pool, me, ripe_at);
            continue;
        }
        job->ran_on = me->index + 1;
        job->ran_by = me;
        pool->running++;
        /* more work queued: this thread, not the hub, wakes the next idle one */
        cs_wake_one(pool);
        pthread_mutex_unlock(&pool->lock);
        if (atomic_load_explicit(&me->handed_back, memory_order_relaxed) != NULL) {
            cs_free_handed_back(me); /* its own arena, before the job allocates there again */
        }
        cs_job_run(job);
        pthread_mutex_lock(&pool->lock);
        pool->running--;
        job->work_waiting = cs_queued(pool) > 0;
        if (cs_finished(pool, job)) {
            /* outside the lock: the write wakes the hub, which then takes this lock */
            pthread_mutex_unlock(&pool->lock);
            uint64_t one = 1;
            ssize_t written = write(pool->fd, &one, sizeof one);
            (void)written; /* only fails when the counter is full: the hub is woken anyway */
            pthread_mutex_lock(&pool->lock);
        }
    }
    cs_retire(pool, me);
    pool->exiting++;
    pthread_mutex_unlock(&pool->lock);
    cs_free_handed_back(me); /* after alive was cleared: see cs_job_release */
    pthread_mutex_lock(&pool->lock);
    pool->exiting--;
    pthread_cond_broadcast(&pool->thread_gone);
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

cs_pool *cs_pool_new(void) {
    cs_pool *pool = (cs_pool *)calloc(1, sizeof *pool);
    if (!pool) {
        return NULL;
    }
    pool->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pool->fd < 0) {
        free(pool);
        return NULL;
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->thread_gone, NULL);
    pool->done_batch = CS_DONE_BATCH;
    pool->done_delay_s = CS_DONE_DELAY_S;
    return pool;
}

/* cs_finished's thresholds (a batch of 1 writes the eventfd for every job the hub has not
 * been told of, as before change 41); for benchmarks. */
void cs_pool_set_batching(cs_pool *pool, int batch, double delay_s) {
    pthread_mutex_lock(&pool->lock);
    pool->done_batch = batch < 1 ? 1 : (size_t)batch;
    pool->done_delay_s = delay_s < 0 ? 0 : delay_s;
    pthread_mutex_unlock(&pool->lock);
}

int cs_pool_fd(cs_pool *pool) { return pool->fd; }

/* A slot for a new thread, with the lock held: the lowest free index (a job that preferred a
 * retired thread may land on its successor: only a preference), else a new one. */
static cs_slot *cs_free_slot(cs_pool *pool) {
    for (int i = 0; i < pool->slot_count; i++) {
        if (!pool->slots[i]->alive) {
            return pool->slots[i];
        }
    }
    cs_slot **grown = (cs_slot **)realloc(pool->slots, (size_t)(pool->slot_count + 1) *
                                                           sizeof *grown);
    if (!grown) {
        return NULL;
    }
    pool->slots = grown;
    cs_slot *slot = (cs_slot *)calloc(1, sizeof *slot);
    if (!slot) {
        return NULL;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* cs_wait's time-out: cs_monotonic */
    pthread_cond_init(&slot->wake, &attr);
    pthread_condattr_destroy(&attr);
    slot->pool = pool;
    slot->index = pool->slot_count;
    pool->slots[pool->slot_count++] = slot;
    return slot;
}

static void cs_wake_all(cs_pool *pool) {
    for (int i = 0; i < pool->slot_count; i++) {
        if (pool->slots[i]->alive) {
            pthread_cond_signal(&pool->slots[i]->wake);
        }
    }
}

/* Start or retire threads; returns how many run (fewer than asked if a thread cannot start). */
int cs_pool_resize(cs_pool *pool, int threads) {
    pthread_mutex_lock(&pool->lock);
    pool->target = threads < 0 ? 0 : threads;
    while (pool->threads < pool->target) {
        cs_slot *slot = cs_free_slot(pool);
        int failed = slot == NULL;
        if (!failed) {
            pthread_t thread;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            slot->alive = 1;
            failed = pthread_create(&thread, &attr, cs_worker, slot);
            pthread_attr_destroy(&attr);
            if (failed) {
                slot->alive = 0;
            }
        }
        if (failed) {
            pool->target = pool->threads;
            break;
        }
        pool->threads++;
    }
    cs_wake_all(pool); /* threads above the target exit */
    int running = pool->target;
    pthread_mutex_unlock(&pool->lock);
    return running;
}

/* Queue a job without waking a thread: a busy thread takes it when it is done, and the caller
 * wakes idle ones with cs_pool_wake. Why apart (docs/performance.md change 16): waking a
 * thread that sleeps on another CPU costs the waker ~20 us of CPU here (a futex wake and an
 * inter-processor interrupt, dear under a hypervisor); the hub submits many jobs per loop
 * turn and wakes the pool once for all of them. An urgent job that prefers a running thread
 * waits in that thread's lane (change 40); one whose thread is gone, in the shared lane. */
void cs_pool_push(cs_pool *pool, cs_job *job, int urgent) {
    job->pushed_at = cs_monotonic();
    pthread_mutex_lock(&pool->lock);
    int index = job->prefer - 1;
    if (urgent && index >= 0 && index < pool->slot_count && pool->slots[index]->alive) {
        cs_lane_push(&pool->slots[index]->mine, job);
        pool->preferred++;
    } else {
        cs_lane_push(urgent ? &pool->urgent : &pool->normal, job);
    }
    pthread_mutex_unlock(&pool->lock);
}

/* Wake one idle thread for the queued jobs unless one is already on its way; a thread that
 * takes a job wakes the next one itself while work remains (cs_worker), so the hub pays one
 * futex wake at most per call and none while a signalled thread has not run yet. */
void cs_pool_wake(cs_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    if (pool->waking == 0) {
        cs_wake_one(pool);
    }
    pthread_mutex_unlock(&pool->lock);
}

/* Jobs waiting for a thread, every lane. */
size_t cs_pool_waiting(cs_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    size_t waiting = cs_queued(pool);
    pthread_mutex_unlock(&pool->lock);
    return waiting;
}

/* Every finished job (a list through ->next, oldest first), and the eventfd drained. */
cs_job *cs_pool_take_done(cs_pool *pool) {
    uint64_t count;
    ssize_t got = read(pool->fd, &count, sizeof count);
    (void)got; /* EAGAIN: nothing to drain, the list says what finished */
    pthread_mutex_lock(&pool->lock);
    cs_job *done = pool->done.head;
    pool->done.head = pool->done.tail = NULL;
    pool->done.count = 0;
    pool->notified = 0;
    pthread_mutex_unlock(&pool->lock);
    return done;
}

/* Let the threads finish the queued jobs and exit; returns once none runs. The pool itself
 * stays allocated (a process-lifetime object), so a late submit is only ever queued. */
void cs_pool_stop(cs_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    cs_wake_all(pool); /* jobs pushed without a wake yet */
    while (cs_queued(pool) > 0) {
        /* the threads still run: wait for them to drain the lanes (a job that prefers a busy
         * thread is taken by another after CS_STEAL_AFTER_S: the waits here time out) */
        pthread_mutex_unlock(&pool->lock);
        usleep(1000);
        pthread_mutex_lock(&pool->lock);
        if (pool->threads == 0) {
            break;
        }
    }
    pool->target = 0;
    cs_wake_all(pool);
    while (pool->threads > 0 || pool->exiting > 0) {
        pthread_cond_wait(&pool->thread_gone, &pool->lock);
    }
    pthread_mutex_unlock(&pool->lock);
}

/* Blocks handed back to the threads (cs_job_release) and not freed yet; and ever (tests). */
size_t cs_pool_handed_back(cs_pool *pool) { return atomic_load(&pool->handed_back); }

size_t cs_pool_handed_back_total(cs_pool *pool) { return atomic_load(&pool->handed_back_total); }

/* ---- the heap -----------------------------------------------------------------------------
 *
 * Why (docs/performance.md, change 11): every transaction allocates and frees a few hundred KB
 * in the engine threads' malloc arenas. glibc keeps the freed pages, and the holes between live
 * blocks grow RSS by a few MiB over the first hundred thousand transactions although nothing
 * leaks (measured: with a trim every few seconds the soak stays flat). malloc_trim gives every
 * arena's free pages back to the kernel; it takes the arenas' locks in turn, so it runs on a
 * thread of its own, never on the hub. With jemalloc preloaded (docs/performance.md change 53)
 * glibc's arenas are unused and the same job is jemalloc's purge of every arena (its
 * `mallctl`, looked up at run time: the glue is not linked against it; RTLD_DEFAULT needs
 * _GNU_SOURCE, which Python.h defines ahead of this file in cffi's module). Other C libraries
 * have no malloc_trim: nothing to do. */
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <dlfcn.h>

typedef int (*cs_mallctl_fn)(const char *, void *, size_t *, void *, size_t);

int cs_trim_heap(void) {
    cs_mallctl_fn mallctl = (cs_mallctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
    if (mallctl != NULL) {
        /* "arena.<MALLCTL_ARENAS_ALL>.purge", MALLCTL_ARENAS_ALL being 4096 (jemalloc(3)) */
        return mallctl("arena.4096.purge", NULL, NULL, NULL, 0) == 0;
    }
#ifdef __GLIBC__
    return malloc_trim(0);
#else
    return 0;
#endif
}
