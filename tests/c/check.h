/* Minimal test support for the C tests: counted checks and fixture loading. */
#ifndef MSCLAM_TEST_CHECK_H
#define MSCLAM_TEST_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msclam.h"

static int g_passed = 0;
static int g_failed = 0;

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (cond) {                                                               \
            g_passed++;                                                           \
        } else {                                                                  \
            g_failed++;                                                           \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                         \
            fprintf(stderr, " (last error: %s)\n", msclam_last_error_message()); \
        }                                                                         \
    } while (0)

/* Checks that `call` returns `expected`. */
#define CHECK_STATUS(call, expected)                                                          \
    do {                                                                                      \
        msclam_status got_ = (call);                                                          \
        CHECK(got_ == (expected), "%s returned %d (%s), expected %d", #call, (int)got_,       \
              msclam_status_string((int32_t)got_), (int)(expected));                          \
    } while (0)

/* Prints the closing line ("name: N passed, M failed") and returns the exit code. */
static inline int finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}

/* Reads a whole file into a malloc'ed buffer (caller frees); exits on failure. */
static inline void *read_file(const char *dir, const char *name, size_t *out_len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open fixture %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = (char *)malloc((size_t)len + 1); /* NUL-terminated for text files */
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "cannot read fixture %s\n", path);
        exit(2);
    }
    buf[len] = 0;
    fclose(f);
    if (out_len) *out_len = (size_t)len;
    return buf;
}

/* The slide, and what the Rust engine computed for it (tests/c/fixtures.rs). */
typedef struct fixture {
    const char *dir;
    char model_path[4096];
    size_t tiles, dim, classes, tumor_class;
    float threshold;
    float *slide;
    uint32_t *coords;
    float *tile_probs, *attention_logits, *attention, *slide_probs;
    float *portable_tile_probs, *portable_slide_probs;
    uint8_t *mask;
} fixture;

static inline fixture load_fixture(const char *dir) {
    fixture fx;
    memset(&fx, 0, sizeof fx);
    fx.dir = dir;
    snprintf(fx.model_path, sizeof fx.model_path, "%s/model.mscl", dir);
    char *text = (char *)read_file(dir, "fixture.txt", NULL);
    if (sscanf(text, "tiles %zu dim %zu classes %zu tumor_class %zu threshold %f", &fx.tiles,
               &fx.dim, &fx.classes, &fx.tumor_class, &fx.threshold) != 5) {
        fprintf(stderr, "bad fixture.txt\n");
        exit(2);
    }
    free(text);
    fx.slide = (float *)read_file(dir, "slide.f32", NULL);
    fx.coords = (uint32_t *)read_file(dir, "coords.u32", NULL);
    fx.tile_probs = (float *)read_file(dir, "expected_tile_probs.f32", NULL);
    fx.attention_logits = (float *)read_file(dir, "expected_attention_logits.f32", NULL);
    fx.attention = (float *)read_file(dir, "expected_attention.f32", NULL);
    fx.slide_probs = (float *)read_file(dir, "expected_slide_probs.f32", NULL);
    fx.portable_tile_probs = (float *)read_file(dir, "expected_portable_tile_probs.f32", NULL);
    fx.portable_slide_probs = (float *)read_file(dir, "expected_portable_slide_probs.f32", NULL);
    fx.mask = (uint8_t *)read_file(dir, "expected_mask.u8", NULL);
    return fx;
}

static inline void free_fixture(fixture *fx) {
    free(fx->slide);
    free(fx->coords);
    free(fx->tile_probs);
    free(fx->attention_logits);
    free(fx->attention);
    free(fx->slide_probs);
    free(fx->portable_tile_probs);
    free(fx->portable_slide_probs);
    free(fx->mask);
}

/* |a - b| <= rel * |b| + abs_floor. The Rust engine and this library run the same code; the
 * tolerance only absorbs a different instruction set (e.g. under valgrind, which hides
 * AVX-512 from the program). */
static inline int close_enough(float a, float b, double rel) {
    return fabs((double)a - (double)b) <= rel * fabs((double)b) + 1e-7;
}

/* Strip sizes used by the fixtures' Rust run; the C tests cycle through them too. */
static const size_t STRIPS[4] = {1, 7, 64, 33};

#endif
