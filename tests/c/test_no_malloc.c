/* Counts every call into the C allocator (malloc, calloc, realloc, free, posix_memalign,
 * aligned_alloc, memalign), wrapped at link time with -Wl,--wrap against the STATIC library,
 * and shows zero calls while whole slides are streamed, read, finalized and reset through a
 * session living in a caller-provided arena. Also reports exactly what loading a model from a
 * borrowed buffer allocates. Usage: test_no_malloc <fixture dir> */
#define _POSIX_C_SOURCE 200809L
#include "check.h"

static volatile long g_calls = 0;
static volatile long g_live = 0; /* allocations minus releases while counting */
static volatile int g_counting = 0;

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void __real_free(void *p);
int __real_posix_memalign(void **out, size_t align, size_t size);
void *__real_aligned_alloc(size_t align, size_t size);
void *__real_memalign(size_t align, size_t size);

void *__wrap_malloc(size_t size) { g_calls += g_counting; g_live += g_counting; return __real_malloc(size); }
void *__wrap_calloc(size_t n, size_t size) { g_calls += g_counting; g_live += g_counting; return __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t size) { g_calls += g_counting; g_live += g_counting && p == NULL; return __real_realloc(p, size); }
void __wrap_free(void *p) { g_calls += g_counting && p != NULL; g_live -= g_counting && p != NULL; __real_free(p); }
int __wrap_posix_memalign(void **out, size_t align, size_t size) { g_calls += g_counting; g_live += g_counting; return __real_posix_memalign(out, align, size); }
void *__wrap_aligned_alloc(size_t align, size_t size) { g_calls += g_counting; g_live += g_counting; return __real_aligned_alloc(align, size); }
void *__wrap_memalign(size_t align, size_t size) { g_calls += g_counting; g_live += g_counting; return __real_memalign(align, size); }

static void start_counting(void) { g_calls = 0; g_live = 0; g_counting = 1; }
static long stop_counting(void) { g_counting = 0; return g_calls; }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    fixture fx = load_fixture(argv[1]);
    size_t file_len = 0;
    void *model_bytes = read_file(fx.dir, "model.mscl", &file_len);

    /* The counter works: a malloc/free pair inside the window counts 2. */
    start_counting();
    void *volatile probe = malloc(100);
    free(probe);
    CHECK(stop_counting() == 2, "the wrapper counts allocator calls");

    /* Loading from a borrowed buffer: a handful of small allocations, stated in the header. */
    msclam_model *model = NULL;
    start_counting();
    msclam_status st = msclam_model_load_from_borrowed_buffer(model_bytes, file_len, &model);
    long load_calls = stop_counting();
    CHECK_STATUS(st, MSCLAM_STATUS_OK);
    printf("msclam_model_load_from_borrowed_buffer (f32): %ld allocator calls\n", load_calls);
    /* As the header states: the handle, the model's bookkeeping, the metadata index. */
    CHECK(load_calls == 3, "loading from a borrowed buffer made %ld allocator calls, not 3", load_calls);
    msclam_model_info info = msclam_model_info_init();
    CHECK_STATUS(msclam_model_get_info(model, &info), MSCLAM_STATUS_OK);
    CHECK(info.converted_bytes == 0 && info.metadata_count > 0, "f32 weights in place, with metadata");
    /* Freeing releases exactly those three. */
    start_counting();
    msclam_model_free(model);
    long free_calls = stop_counting();
    CHECK(free_calls == 3, "msclam_model_free made %ld allocator calls, not 3", free_calls);
    /* Converted (bf16) weights: temporary buffers while converting, and at most three more
     * blocks kept (the converted copies), as the header states. */
    size_t bf16_len = 0;
    void *bf16_bytes = read_file(fx.dir, "model_bf16.mscl", &bf16_len);
    start_counting();
    st = msclam_model_load_from_borrowed_buffer(bf16_bytes, bf16_len, &model);
    long bf16_calls = stop_counting();
    long bf16_kept = g_live;
    CHECK_STATUS(st, MSCLAM_STATUS_OK);
    printf("msclam_model_load_from_borrowed_buffer (bf16): %ld allocator calls, %ld blocks kept\n",
           bf16_calls, bf16_kept);
    CHECK(bf16_kept > 3 && bf16_kept <= 6, "bf16 load kept %ld blocks", bf16_kept);
    start_counting();
    msclam_model_free(model);
    CHECK(stop_counting() == bf16_kept, "msclam_model_free released every block the load kept");
    free(bf16_bytes);
    CHECK_STATUS(msclam_model_load_from_borrowed_buffer(model_bytes, file_len, &model), MSCLAM_STATUS_OK);

    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = fx.tiles;
    size_t needed = 0;
    CHECK_STATUS(msclam_session_arena_size(model, &opts, &needed), MSCLAM_STATUS_OK);
    void *arena = NULL;
    CHECK(posix_memalign(&arena, MSCLAM_ARENA_ALIGNMENT, needed) == 0, "arena");
    float *probs = (float *)malloc(fx.tiles * sizeof(float));
    float *attention = (float *)malloc(fx.tiles * sizeof(float));
    uint8_t *mask = (uint8_t *)malloc(fx.tiles);
    float slide_prob = 0.0f, total = 0.0f;
    size_t count = 0;

    start_counting();
    msclam_session *s = NULL;
    st = msclam_session_create_in_arena(model, &opts, arena, needed, &s);
    for (int slide = 0; slide < 3 && st == MSCLAM_STATUS_OK; slide++) {
        size_t start = 0, i = 0;
        while (start < fx.tiles) {
            size_t n = STRIPS[i++ % 4];
            if (start + n > fx.tiles) n = fx.tiles - start;
            msclam_session_push(s, fx.slide + start * fx.dim, n, fx.dim, fx.coords + 2 * start,
                                probs + start, NULL, &slide_prob);
            start += n;
        }
        /* A rejected push (capacity) and a failed call record an error without allocating. */
        msclam_session_push(s, fx.slide, 1, fx.dim, fx.coords, NULL, NULL, NULL);
        msclam_slide_result r = msclam_slide_result_init();
        msclam_session_finalize(s, &r);
        msclam_session_copy_attention(s, attention, fx.tiles, &count);
        msclam_session_copy_tile_mask(s, mask, fx.tiles, &count);
        msclam_session_tumor_probability(s, &slide_prob);
        total += r.tumor_probability + attention[0] + (float)mask[0];
        msclam_session_reset(s);
    }
    msclam_session_free(s);
    long session_calls = stop_counting();
    CHECK_STATUS(st, MSCLAM_STATUS_OK);
    CHECK(session_calls == 0, "%ld allocator calls while streaming 3 slides in an arena", session_calls);
    CHECK(isfinite(total) && count == fx.tiles, "results were produced");
    printf("arena session, 3 slides of %zu tiles: %ld allocator calls\n", fx.tiles, session_calls);

    /* The same with a heap session: creation allocates, streaming does not. */
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    start_counting();
    for (size_t t = 0; t < fx.tiles; t += 50)
        msclam_session_push(s, fx.slide + t * fx.dim, 50, fx.dim, fx.coords + 2 * t, NULL, NULL, NULL);
    msclam_slide_result r = msclam_slide_result_init();
    msclam_session_finalize(s, &r);
    msclam_session_reset(s);
    long heap_session_calls = stop_counting();
    CHECK(heap_session_calls == 0, "%ld allocator calls while streaming in a heap session", heap_session_calls);
    msclam_session_free(s);

    msclam_model_free(model);
    free(arena);
    free(probs);
    free(attention);
    free(mask);
    free(model_bytes);
    free_fixture(&fx);
    return finish("test_no_malloc");
}
