/*
 * threads.c - the CPU plugin's persistent thread pool.
 *
 * n_threads - 1 workers live as long as the pool. The caller publishes a job
 * in one atomic word, `work` = job number (32 bits) | chunk count (16) | next
 * chunk (16), under the mutex so that sleepers on the condition variable
 * cannot miss it; workers spin briefly on the word before they sleep, so
 * back-to-back jobs of one graph cost no syscalls. Every thread, the caller
 * included, claims chunks by compare-and-swap on that word: a claim succeeds
 * only while the job number is the one it woke for and chunks are left, so
 * a worker that wakes late (or is descheduled on a busy machine) finds the
 * job finished and claims nothing. The caller waits only for the chunks that
 * were claimed to be done, never for a worker to wake: a graph of many small
 * nodes does not stall on the scheduler at every node.
 *
 * The range is cut into chunks whose boundaries depend only on n, grain and
 * the pool size. Which thread runs a chunk varies, so kernels write disjoint
 * outputs per chunk and never let a result depend on that.
 *
 * A kcpu_parallel_for called from inside a job (a kernel that nests) runs
 * inline in the calling thread instead of deadlocking.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "cpu-impl.h"

/* Spin iterations before a waiting thread sleeps. */
#define KCPU_SPIN 4000
/* Chunks per thread, for load balance when chunks differ in cost. */
#define KCPU_CHUNKS_PER_THREAD 4

/* The work word's fields. KCPU_MAX_CHUNKS bounds n_chunks (the pool caps
 * it at n_threads * KCPU_CHUNKS_PER_THREAD, and plugin.c caps n_threads). */
#define KCPU_MAX_CHUNKS 0xffff
#define WORK_JOB(w) ((uint32_t)((w) >> 32))
#define WORK_CHUNKS(w) ((int64_t)(((w) >> 16) & 0xffff))
#define WORK_NEXT(w) ((int64_t)((w) & 0xffff))

struct kcpu_pool {
  int n_threads;
  pthread_t *threads;
  pthread_mutex_t mu;
  pthread_cond_t wake;          /* workers: a new job or stop */
  pthread_cond_t done;          /* caller: the job's last chunk is done */
  _Atomic uint64_t work;        /* job | n_chunks | next chunk */
  _Atomic int64_t chunks_done;  /* chunks of the current job finished */
  _Atomic int stop;
  _Atomic int busy;             /* a kcpu_parallel_for owns the pool */
  /* The current job; written by the caller before `work` is published, and
   * not changed until every chunk of it is done. */
  kcpu_range_fn fn;
  void *arg;
  int64_t n, chunk;
};


static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Claims and runs chunks of job `job` until none is left; returns the
 * number this thread ran. */
static int64_t run_chunks(kcpu_pool *pool, uint32_t job, int is_worker) {
  int64_t ran = 0;
  uint64_t w = atomic_load(&pool->work);
  for (;;) {
    if (WORK_JOB(w) != job || WORK_NEXT(w) >= WORK_CHUNKS(w)) break;
    if (!atomic_compare_exchange_weak(&pool->work, &w, w + 1)) continue;
    int64_t begin = WORK_NEXT(w) * pool->chunk;
    int64_t end = begin + pool->chunk < pool->n ? begin + pool->chunk : pool->n;
    pool->fn(pool->arg, begin, end);
    ran++;
    int64_t n_chunks = WORK_CHUNKS(w);
    if (atomic_fetch_add(&pool->chunks_done, 1) + 1 == n_chunks && is_worker) {
      /* a worker finished the job's last chunk: the caller may be asleep */
      pthread_mutex_lock(&pool->mu);
      pthread_cond_signal(&pool->done);
      pthread_mutex_unlock(&pool->mu);
    }
    w = atomic_load(&pool->work);
  }
  return ran;
}

static void *worker_main(void *p) {
  kcpu_pool *pool = p;
  uint32_t seen = 0;
  for (;;) {
    uint32_t job = WORK_JOB(atomic_load(&pool->work));
    for (int spin = 0; job == seen && spin < KCPU_SPIN && !atomic_load(&pool->stop); spin++) {
      cpu_relax();
      job = WORK_JOB(atomic_load(&pool->work));
    }
    if (job == seen) {
      pthread_mutex_lock(&pool->mu);
      while ((job = WORK_JOB(atomic_load(&pool->work))) == seen && !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->wake, &pool->mu);
      pthread_mutex_unlock(&pool->mu);
    }
    if (atomic_load(&pool->stop)) break;
    seen = job;
    run_chunks(pool, job, 1);
  }
  return NULL;
}

kcpu_pool *kcpu_pool_create(int n_threads) {
  if (n_threads < 1) n_threads = 1;
  kcpu_pool *pool = kcpu_calloc(1, sizeof *pool);
  if (!pool) return NULL;
  pool->n_threads = n_threads;
  if (pthread_mutex_init(&pool->mu, NULL) != 0) goto fail_pool;
  if (pthread_cond_init(&pool->wake, NULL) != 0) goto fail_mu;
  if (pthread_cond_init(&pool->done, NULL) != 0) goto fail_wake;
  pool->threads = kcpu_calloc((size_t)n_threads, sizeof *pool->threads);
  if (!pool->threads) goto fail_done;
  for (int i = 0; i < n_threads - 1; i++) {
    if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
      /* Run with the workers we got. */
      pool->n_threads = i + 1;
      break;
    }
  }
  return pool;

fail_done:
  pthread_cond_destroy(&pool->done);
fail_wake:
  pthread_cond_destroy(&pool->wake);
fail_mu:
  pthread_mutex_destroy(&pool->mu);
fail_pool:
  free(pool);
  return NULL;
}

void kcpu_pool_destroy(kcpu_pool *pool) {
  if (!pool) return;
  pthread_mutex_lock(&pool->mu);
  atomic_store(&pool->stop, 1);
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->mu);
  for (int i = 0; i < pool->n_threads - 1; i++) pthread_join(pool->threads[i], NULL);
  free(pool->threads);
  pthread_cond_destroy(&pool->done);
  pthread_cond_destroy(&pool->wake);
  pthread_mutex_destroy(&pool->mu);
  free(pool);
}

int kcpu_pool_size(const kcpu_pool *pool) { return pool ? pool->n_threads : 1; }

void kcpu_parallel_for(kcpu_pool *pool, int64_t n, int64_t grain, kcpu_range_fn fn, void *arg) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  /* Inline: no pool, nothing to split, or the pool is taken: by this very
   * job (a kernel that nests, in a worker or in the caller) or by another
   * thread. (No thread-local flag: LeakSanitizer's tracer trips over the
   * dynamic TLS of a dlclose'd plugin.) */
  if (!pool || pool->n_threads == 1 || n <= grain || atomic_exchange(&pool->busy, 1)) {
    fn(arg, 0, n);
    return;
  }
  int64_t max_chunks = (int64_t)pool->n_threads * KCPU_CHUNKS_PER_THREAD;
  int64_t n_chunks = (n + grain - 1) / grain;
  if (n_chunks > max_chunks) n_chunks = max_chunks;
  int64_t chunk = (n + n_chunks - 1) / n_chunks;
  n_chunks = (n + chunk - 1) / chunk;

  if (n_chunks > KCPU_MAX_CHUNKS) { /* cannot happen with plugin.c's thread cap */
    chunk = (n + KCPU_MAX_CHUNKS - 1) / KCPU_MAX_CHUNKS;
    n_chunks = (n + chunk - 1) / chunk;
  }

  pool->fn = fn;
  pool->arg = arg;
  pool->n = n;
  pool->chunk = chunk;
  atomic_store(&pool->chunks_done, 0);
  uint32_t job = WORK_JOB(atomic_load(&pool->work)) + 1;
  pthread_mutex_lock(&pool->mu);
  atomic_store(&pool->work, (uint64_t)job << 32 | (uint64_t)n_chunks << 16);
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->mu);

  run_chunks(pool, job, 0);   /* the caller never signals itself */

  /* Only chunks that a worker claimed can still be running. */
  for (int spin = 0; atomic_load(&pool->chunks_done) != n_chunks && spin < KCPU_SPIN; spin++)
    cpu_relax();
  if (atomic_load(&pool->chunks_done) != n_chunks) {
    pthread_mutex_lock(&pool->mu);
    while (atomic_load(&pool->chunks_done) != n_chunks) pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
  }
  atomic_store(&pool->busy, 0);
}
