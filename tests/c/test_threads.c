/* Several threads share one model, each with its own session and its own strip sizes; every
 * thread's results equal the single-threaded ones. Usage: test_threads <fixture dir> */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>

#include "check.h"

#define THREADS 4

typedef struct job {
    const fixture *fx;
    const msclam_model *model;
    size_t strip;
    float *tile_probs;
    float *attention;
    float slide_prob;
    msclam_status status;
} job;

static void *run_job(void *arg) {
    job *j = (job *)arg;
    const fixture *fx = j->fx;
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = fx->tiles;
    msclam_session *s = NULL;
    j->status = msclam_session_create(j->model, &opts, &s);
    for (int repeat = 0; repeat < 2 && j->status == MSCLAM_STATUS_OK; repeat++) {
        msclam_session_reset(s);
        for (size_t t = 0; t < fx->tiles && j->status == MSCLAM_STATUS_OK; t += j->strip) {
            size_t n = t + j->strip <= fx->tiles ? j->strip : fx->tiles - t;
            j->status = msclam_session_push(s, fx->slide + t * fx->dim, n, fx->dim, NULL,
                                            j->tile_probs + t, NULL, &j->slide_prob);
        }
    }
    size_t count = 0;
    if (j->status == MSCLAM_STATUS_OK)
        j->status = msclam_session_copy_attention(s, j->attention, fx->tiles, &count);
    msclam_session_free(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    fixture fx = load_fixture(argv[1]);
    msclam_model *model = NULL;
    CHECK_STATUS(msclam_model_load(fx.model_path, &model), MSCLAM_STATUS_OK);
    const size_t strips[THREADS + 1] = {fx.tiles, 1, 7, 64, 33};
    job jobs[THREADS + 1];
    for (int i = 0; i <= THREADS; i++) {
        jobs[i].fx = &fx;
        jobs[i].model = model;
        jobs[i].strip = strips[i];
        jobs[i].tile_probs = (float *)calloc(fx.tiles, sizeof(float));
        jobs[i].attention = (float *)calloc(fx.tiles, sizeof(float));
        jobs[i].status = MSCLAM_STATUS_PANIC;
    }
    run_job(&jobs[0]); /* single-threaded baseline, on the main thread */
    CHECK_STATUS(jobs[0].status, MSCLAM_STATUS_OK);
    pthread_t threads[THREADS];
    for (int i = 1; i <= THREADS; i++)
        CHECK(pthread_create(&threads[i - 1], NULL, run_job, &jobs[i]) == 0, "thread %d started", i);
    for (int i = 1; i <= THREADS; i++) {
        pthread_join(threads[i - 1], NULL);
        CHECK_STATUS(jobs[i].status, MSCLAM_STATUS_OK);
        /* Tile outputs do not depend on the strip size: bit-identical to the baseline. */
        CHECK(memcmp(jobs[i].tile_probs, jobs[0].tile_probs, fx.tiles * sizeof(float)) == 0,
              "thread %d tile probabilities", i);
        CHECK(fabsf(jobs[i].slide_prob - jobs[0].slide_prob) <= 1e-6f, "thread %d slide %g vs %g", i,
              jobs[i].slide_prob, jobs[0].slide_prob);
        size_t bad = 0;
        for (size_t t = 0; t < fx.tiles; t++)
            if (!close_enough(jobs[i].attention[t], jobs[0].attention[t], 1e-5)) bad++;
        CHECK(bad == 0, "thread %d: %zu attention values differ", i, bad);
    }
    for (size_t t = 0, bad = 0; t < fx.tiles; t++) {
        if (!close_enough(jobs[0].tile_probs[t], fx.tile_probs[t], 1e-5)) bad++;
        if (t + 1 == fx.tiles) CHECK(bad == 0, "%zu baseline tile probabilities differ from Rust's", bad);
    }
    for (int i = 0; i <= THREADS; i++) {
        free(jobs[i].tile_probs);
        free(jobs[i].attention);
    }
    msclam_model_free(model);
    free_fixture(&fx);
    return finish("test_threads");
}
