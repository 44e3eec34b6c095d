/*
 * threads.c - the CPU plugin's persistent thread pool.
 *
 * n_threads - 1 workers live as long as the pool. A job is published by
 * bumping an atomic generation counter (under the mutex, so sleepers on the
 * condition variable cannot miss it); workers spin briefly on the counter
 * before they sleep, so back-to-back jobs of one graph cost no syscalls.
 * The range is cut into chunks whose boundaries depend only on n, grain and
 * the pool size; threads claim chunks with an atomic counter. Which thread
 * runs a chunk varies, so kernels write disjoint outputs per chunk and never
 * let a result depend on that.
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

struct kcpu_pool {
  int n_threads;
  pthread_t *threads;
  pthread_mutex_t mu;
  pthread_cond_t wake;          /* workers: a new generation or stop */
  pthread_cond_t done;          /* caller: all workers left the job */
  _Atomic uint64_t generation;
  _Atomic int stop;
  _Atomic int remaining;        /* workers still inside the current job */
  /* The current job; written by the caller before the generation bump. */
  kcpu_range_fn fn;
  void *arg;
  int64_t n, chunk, n_chunks;
  _Atomic int64_t next_chunk;
};

static _Thread_local int kcpu_in_job;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void run_chunks(kcpu_pool *pool) {
  for (;;) {
    int64_t c = atomic_fetch_add(&pool->next_chunk, 1);
    if (c >= pool->n_chunks) break;
    int64_t begin = c * pool->chunk;
    int64_t end = begin + pool->chunk < pool->n ? begin + pool->chunk : pool->n;
    pool->fn(pool->arg, begin, end);
  }
}

static void *worker_main(void *p) {
  kcpu_pool *pool = p;
  uint64_t seen = 0;
  kcpu_in_job = 1;
  for (;;) {
    uint64_t g = atomic_load(&pool->generation);
    for (int spin = 0; g == seen && spin < KCPU_SPIN; spin++) {
      cpu_relax();
      g = atomic_load(&pool->generation);
    }
    if (g == seen) {
      pthread_mutex_lock(&pool->mu);
      while ((g = atomic_load(&pool->generation)) == seen)
        pthread_cond_wait(&pool->wake, &pool->mu);
      pthread_mutex_unlock(&pool->mu);
    }
    seen = g;
    if (atomic_load(&pool->stop)) break;
    run_chunks(pool);
    if (atomic_fetch_sub(&pool->remaining, 1) == 1) {
      pthread_mutex_lock(&pool->mu);
      pthread_cond_signal(&pool->done);
      pthread_mutex_unlock(&pool->mu);
    }
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
  atomic_fetch_add(&pool->generation, 1);
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
  if (!pool || pool->n_threads == 1 || n <= grain || kcpu_in_job) {
    fn(arg, 0, n);
    return;
  }
  int64_t max_chunks = (int64_t)pool->n_threads * KCPU_CHUNKS_PER_THREAD;
  int64_t n_chunks = (n + grain - 1) / grain;
  if (n_chunks > max_chunks) n_chunks = max_chunks;
  int64_t chunk = (n + n_chunks - 1) / n_chunks;
  n_chunks = (n + chunk - 1) / chunk;

  pool->fn = fn;
  pool->arg = arg;
  pool->n = n;
  pool->chunk = chunk;
  pool->n_chunks = n_chunks;
  atomic_store(&pool->next_chunk, 0);
  atomic_store(&pool->remaining, pool->n_threads - 1);
  pthread_mutex_lock(&pool->mu);
  atomic_fetch_add(&pool->generation, 1);
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->mu);

  kcpu_in_job = 1;
  run_chunks(pool);
  kcpu_in_job = 0;

  for (int spin = 0; atomic_load(&pool->remaining) != 0 && spin < KCPU_SPIN; spin++) cpu_relax();
  if (atomic_load(&pool->remaining) != 0) {
    pthread_mutex_lock(&pool->mu);
    while (atomic_load(&pool->remaining) != 0) pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
  }
}
