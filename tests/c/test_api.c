/* The C API end to end: loading, metadata, streaming against the Rust engine's outputs, every
 * error path, the arena variant, lifetimes. Usage: test_api <fixture dir> */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static const double REL = 1e-5;

/* Streams the fixture's slide in the fixture's strip sizes, checking each strip's outputs. */
static void stream_and_compare(msclam_session *s, const fixture *fx, int exact_portable) {
    const float *want_probs = exact_portable ? fx->portable_tile_probs : fx->tile_probs;
    float *probs = (float *)malloc(fx->tiles * sizeof(float));
    float *logits = (float *)malloc(fx->tiles * sizeof(float));
    float slide_prob = -1.0f;
    size_t start = 0, i = 0, bad_probs = 0, bad_logits = 0;
    while (start < fx->tiles) {
        size_t n = STRIPS[i++ % 4];
        if (start + n > fx->tiles) n = fx->tiles - start;
        CHECK_STATUS(msclam_session_push(s, fx->slide + start * fx->dim, n, fx->dim,
                                         fx->coords + 2 * start, probs + start, logits + start,
                                         &slide_prob),
                     MSCLAM_STATUS_OK);
        start += n;
        CHECK(msclam_session_tile_count(s) == start, "tile count %zu", msclam_session_tile_count(s));
    }
    for (size_t t = 0; t < fx->tiles; t++) {
        if (exact_portable ? probs[t] != want_probs[t] : !close_enough(probs[t], want_probs[t], REL)) bad_probs++;
        if (fabsf(logits[t] - fx->attention_logits[t]) > 1e-5f * (1.0f + fabsf(fx->attention_logits[t]))) bad_logits++;
    }
    CHECK(bad_probs == 0, "%zu tile probabilities differ from the Rust engine's", bad_probs);
    CHECK(bad_logits == 0, "%zu attention logits differ from the Rust engine's", bad_logits);
    const float *want_slide = exact_portable ? fx->portable_slide_probs : fx->slide_probs;
    CHECK(close_enough(slide_prob, want_slide[fx->tumor_class], REL), "slide prob %g vs %g",
          slide_prob, want_slide[fx->tumor_class]);
    float current = -1.0f;
    CHECK_STATUS(msclam_session_tumor_probability(s, &current), MSCLAM_STATUS_OK);
    CHECK(current == slide_prob, "current %g vs last push %g", current, slide_prob);
    free(probs);
    free(logits);
}

/* Finalizes and checks every slide-level output against the Rust engine's. */
static void finalize_and_compare(msclam_session *s, const fixture *fx) {
    msclam_slide_result r = msclam_slide_result_init();
    CHECK_STATUS(msclam_session_finalize(s, &r), MSCLAM_STATUS_OK);
    CHECK(r.num_tiles == fx->tiles && r.num_classes == fx->classes, "result sizes %zu %u", r.num_tiles, r.num_classes);
    size_t want_class = fx->slide_probs[1] > fx->slide_probs[0] ? 1 : 0;
    CHECK(r.predicted_class == want_class, "class %u", r.predicted_class);
    CHECK(close_enough(r.tumor_probability, fx->slide_probs[fx->tumor_class], REL), "tumor prob %g", r.tumor_probability);

    float slide[8];
    size_t count = 0;
    CHECK_STATUS(msclam_session_copy_slide_probabilities(s, slide, 8, &count), MSCLAM_STATUS_OK);
    CHECK(count == fx->classes, "slide prob count %zu", count);
    for (size_t c = 0; c < fx->classes; c++)
        CHECK(close_enough(slide[c], fx->slide_probs[c], REL), "slide prob %zu: %g vs %g", c, slide[c], fx->slide_probs[c]);

    float *attention = (float *)malloc(fx->tiles * sizeof(float));
    uint8_t *mask = (uint8_t *)malloc(fx->tiles);
    uint32_t *coords = (uint32_t *)malloc(2 * fx->tiles * sizeof(uint32_t));
    CHECK_STATUS(msclam_session_copy_attention(s, attention, fx->tiles, &count), MSCLAM_STATUS_OK);
    CHECK(count == fx->tiles, "attention count %zu", count);
    double sum = 0;
    size_t bad = 0, tumor = 0, bad_mask = 0;
    for (size_t t = 0; t < fx->tiles; t++) {
        sum += attention[t];
        if (!close_enough(attention[t], fx->attention[t], REL)) bad++;
    }
    CHECK(bad == 0, "%zu attention values differ", bad);
    CHECK(fabs(sum - 1.0) < 1e-5, "attention sums to %g", sum);
    CHECK_STATUS(msclam_session_copy_tile_mask(s, mask, fx->tiles, &count), MSCLAM_STATUS_OK);
    for (size_t t = 0; t < fx->tiles; t++) {
        tumor += mask[t];
        /* Tiles within rounding of the threshold may legitimately differ between ISAs. */
        if (mask[t] != fx->mask[t] && fabsf(fx->tile_probs[t] - fx->threshold) > 1e-4f) bad_mask++;
    }
    CHECK(bad_mask == 0, "%zu mask entries differ", bad_mask);
    CHECK(tumor == r.tumor_tiles, "mask has %zu tumor tiles, result says %zu", tumor, r.tumor_tiles);
    CHECK_STATUS(msclam_session_copy_coordinates(s, coords, 2 * fx->tiles, &count), MSCLAM_STATUS_OK);
    CHECK(count == 2 * fx->tiles && memcmp(coords, fx->coords, 2 * fx->tiles * sizeof(uint32_t)) == 0, "coordinates");
    free(attention);
    free(mask);
    free(coords);
}

static void test_version_and_statuses(void) {
    CHECK(msclam_version() == MSCLAM_VERSION, "library %u vs header %u", msclam_version(), (unsigned)MSCLAM_VERSION);
    CHECK(strlen(msclam_version_string()) >= 5, "version string");
    CHECK(strcmp(msclam_status_string(MSCLAM_STATUS_OK), "ok") == 0, "ok text");
    for (int code = 1; code <= MSCLAM_STATUS_UNSUPPORTED; code++)
        CHECK(strcmp(msclam_status_string(code), "unknown status") != 0, "code %d has a text", code);
    CHECK(strcmp(msclam_status_string(-1), "unknown status") == 0, "unknown code");
    CHECK(strcmp(msclam_status_string(1000), "unknown status") == 0, "unknown code");
}

/* The default build has no ONNX tile encoder: its functions exist and say so. */
static void test_encoder_is_unsupported_without_onnx(void) {
    msclam_encoder *encoder = NULL;
    msclam_encoder_options options = msclam_encoder_options_default();
    CHECK(options.struct_size == sizeof options && options.tile_size == 224 && options.batch == 16,
          "encoder defaults");
    CHECK_STATUS(msclam_encoder_load("encoder.onnx", NULL, &options, &encoder), MSCLAM_STATUS_UNSUPPORTED);
    CHECK(encoder == NULL, "no encoder");
    CHECK(strstr(msclam_last_error_message(), "onnx") != NULL, "message: %s", msclam_last_error_message());
    CHECK(msclam_encoder_embedding_dim(NULL) == 0, "NULL encoder");
    msclam_encoder_free(NULL);
}

static void test_model_loading_and_metadata(const fixture *fx) {
    msclam_model *model = NULL;
    CHECK_STATUS(msclam_model_load(fx->model_path, &model), MSCLAM_STATUS_OK);
    msclam_model_info info = msclam_model_info_init();
    CHECK_STATUS(msclam_model_get_info(model, &info), MSCLAM_STATUS_OK);
    CHECK(info.input_dim == fx->dim && info.hidden_dim == 512 && info.attention_dim == 256, "dims");
    CHECK(info.num_classes == fx->classes && info.tumor_class == fx->tumor_class, "classes");
    CHECK(info.attention == MSCLAM_ATTENTION_GATED && info.tile_classifier == MSCLAM_TILE_CLASSIFIER_SINGLE, "kinds");
    CHECK(info.threshold == fx->threshold, "threshold %g", info.threshold);
    CHECK(info.format_version_major == 1, "format major");
    CHECK(info.in_place_bytes > 3000000 && info.converted_bytes == 0, "memory-mapped weights used in place");
    CHECK(info.weight_dtype == MSCLAM_DTYPE_F32, "f32 weights: %u", info.weight_dtype);

    char value[64];
    size_t len = 0;
    CHECK_STATUS(msclam_model_metadata_get(model, "embedder.name", value, sizeof value, &len), MSCLAM_STATUS_OK);
    CHECK(strcmp(value, "resnet50_trunc") == 0 && len == 14, "embedder.name = %s", value);
    CHECK_STATUS(msclam_model_metadata_get(model, "embedder.name", value, 5, &len), MSCLAM_STATUS_BUFFER_TOO_SMALL);
    CHECK(len == 14, "length reported when too small: %zu", len);
    CHECK_STATUS(msclam_model_metadata_get(model, "embedder.name", NULL, 0, &len), MSCLAM_STATUS_BUFFER_TOO_SMALL);
    CHECK_STATUS(msclam_model_metadata_get(model, "no.such.key", value, sizeof value, &len), MSCLAM_STATUS_NOT_FOUND);
    CHECK_STATUS(msclam_model_metadata_get(model, NULL, value, sizeof value, &len), MSCLAM_STATUS_NULL_ARGUMENT);
    int saw_dim = 0;
    for (size_t i = 0; i < info.metadata_count; i++) {
        CHECK_STATUS(msclam_model_metadata_key(model, i, value, sizeof value, &len), MSCLAM_STATUS_OK);
        if (strcmp(value, "embedder.dim") == 0) saw_dim = 1;
    }
    CHECK(saw_dim, "embedder.dim listed");
    CHECK_STATUS(msclam_model_metadata_key(model, info.metadata_count, value, sizeof value, &len), MSCLAM_STATUS_NOT_FOUND);

    /* An older caller's smaller info struct: only its fields are written. */
    struct {
        msclam_model_info info;
        uint32_t guard;
    } small;
    memset(&small, 0xAB, sizeof small);
    small.info.struct_size = 12;
    CHECK_STATUS(msclam_model_get_info(model, &small.info), MSCLAM_STATUS_OK);
    CHECK(small.info.input_dim == fx->dim && small.info.hidden_dim == 512, "first fields written");
    CHECK(small.info.attention_dim == 0xABABABABu, "fields past struct_size untouched");
    memset(&small, 0xAB, sizeof small);
    small.info.struct_size = 10; /* ends inside hidden_dim: only whole fields are written */
    CHECK_STATUS(msclam_model_get_info(model, &small.info), MSCLAM_STATUS_OK);
    CHECK(small.info.input_dim == fx->dim && small.info.hidden_dim == 0xABABABABu, "partial field untouched");
    small.info.struct_size = 4;
    CHECK_STATUS(msclam_model_get_info(model, &small.info), MSCLAM_STATUS_INVALID_ARGUMENT);
    /* A newer caller's larger struct: struct_size comes back as the bytes this library wrote. */
    struct {
        msclam_model_info info;
        unsigned char newer_fields[64];
    } large;
    memset(&large, 0xCD, sizeof large);
    large.info.struct_size = (uint32_t)sizeof large;
    CHECK_STATUS(msclam_model_get_info(model, &large.info), MSCLAM_STATUS_OK);
    CHECK(large.info.struct_size == sizeof(msclam_model_info), "struct_size written back: %u", large.info.struct_size);
    CHECK(large.newer_fields[0] == 0xCD && large.newer_fields[63] == 0xCD, "bytes past the library's struct untouched");
    msclam_model_free(model);

    /* From a buffer (copied) and from a borrowed buffer (in place). */
    size_t file_len = 0;
    unsigned char *bytes = (unsigned char *)read_file(fx->dir, "model.mscl", &file_len);
    CHECK_STATUS(msclam_model_load_from_buffer(bytes, file_len, &model), MSCLAM_STATUS_OK);
    msclam_model_free(model);
    CHECK_STATUS(msclam_model_load_from_borrowed_buffer(bytes, file_len, &model), MSCLAM_STATUS_OK);
    info = msclam_model_info_init();
    CHECK_STATUS(msclam_model_get_info(model, &info), MSCLAM_STATUS_OK);
    CHECK(info.converted_bytes == 0 && info.in_place_bytes > 3000000, "borrowed weights used in place");
    msclam_model_free(model);

    /* Every way a model can be bad. */
    model = (msclam_model *)0x1;
    CHECK_STATUS(msclam_model_load(NULL, &model), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_model_load(fx->model_path, NULL), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_model_load("/nonexistent/model.mscl", &model), MSCLAM_STATUS_IO_ERROR);
    CHECK(strstr(msclam_last_error_message(), "/nonexistent/model.mscl") != NULL, "message names the path");
    CHECK(model == (msclam_model *)0x1, "output untouched on failure");
    CHECK_STATUS(msclam_model_load_from_buffer(bytes, file_len - 1, &model), MSCLAM_STATUS_INVALID_MODEL);
    CHECK(strstr(msclam_last_error_message(), "truncated") != NULL, "truncation explained: %s", msclam_last_error_message());
    CHECK_STATUS(msclam_model_load_from_buffer(bytes, 100, &model), MSCLAM_STATUS_INVALID_MODEL);
    CHECK_STATUS(msclam_model_load_from_buffer(NULL, 10, &model), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_model_load_from_buffer(NULL, 0, &model), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_model_load_from_borrowed_buffer(NULL, 0, &model), MSCLAM_STATUS_NULL_ARGUMENT);
    /* A FIFO (or any file that is not a regular file) is refused at once, not opened. */
    char fifo[4200];
    snprintf(fifo, sizeof fifo, "%s/model.fifo", fx->dir);
    unlink(fifo);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo %s", fifo);
    CHECK_STATUS(msclam_model_load(fifo, &model), MSCLAM_STATUS_IO_ERROR);
    CHECK(strstr(msclam_last_error_message(), "not a regular file") != NULL, "%s", msclam_last_error_message());
    unlink(fifo);
    CHECK_STATUS(msclam_model_load(fx->dir, &model), MSCLAM_STATUS_IO_ERROR);
    /* A file name that is not UTF-8 (Latin-1 "modèle.mscl") loads: POSIX paths are bytes. */
    char latin1[4200];
    snprintf(latin1, sizeof latin1, "%s/mod\xe8le.mscl", fx->dir);
    FILE *copy = fopen(latin1, "wb");
    CHECK(copy != NULL && fwrite(bytes, 1, file_len, copy) == file_len, "copy to %s", latin1);
    fclose(copy);
    CHECK_STATUS(msclam_model_load(latin1, &model), MSCLAM_STATUS_OK);
    msclam_model_free(model);
    model = (msclam_model *)0x1;
    unlink(latin1);
    bytes[file_len / 2] ^= 0x20;
    CHECK_STATUS(msclam_model_load_from_buffer(bytes, file_len, &model), MSCLAM_STATUS_CHECKSUM_MISMATCH);
    bytes[file_len / 2] ^= 0x20;
    bytes[0] = 'X';
    CHECK_STATUS(msclam_model_load_from_buffer(bytes, file_len, &model), MSCLAM_STATUS_INVALID_MODEL);
    bytes[0] = 0x89;
    bytes[8] = 2; /* format major version 2 */
    CHECK_STATUS(msclam_model_load_from_buffer(bytes, file_len, &model), MSCLAM_STATUS_UNSUPPORTED_VERSION);
    bytes[8] = 1;
    CHECK_STATUS(msclam_model_load_from_buffer(bytes, file_len, &model), MSCLAM_STATUS_OK);
    msclam_model_free(model);
    free(bytes);
    msclam_model_free(NULL);
}

/* A session with `opts` streams the fixture and finalizes to the exact bits of the portable
 * reference. */
static void stream_exactly(msclam_model *model, const msclam_session_options *opts, const fixture *fx) {
    msclam_session *s = NULL;
    CHECK_STATUS(msclam_session_create(model, opts, &s), MSCLAM_STATUS_OK);
    stream_and_compare(s, fx, 1);
    finalize_and_compare(s, fx);
    msclam_session_free(s);
}

static void test_streaming(const fixture *fx, msclam_model *model) {
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = fx->tiles;
    msclam_session *s = NULL;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    CHECK(msclam_session_capacity(s) == fx->tiles, "capacity");
    for (int slide = 0; slide < 2; slide++) { /* the second slide reuses the session */
        stream_and_compare(s, fx, 0);
        finalize_and_compare(s, fx);
        CHECK_STATUS(msclam_session_reset(s), MSCLAM_STATUS_OK);
        CHECK(msclam_session_tile_count(s) == 0, "reset empties the session");
    }
    msclam_session_free(s);

    /* Portable kernels: bit-identical to the Rust engine's portable run, on any x86-64 CPU. */
    opts.isa = MSCLAM_ISA_PORTABLE;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    stream_and_compare(s, fx, 1);
    msclam_session_free(s);

    /* Worker threads: bit-identical to one thread (checked exactly on the portable kernels). */
    CHECK(msclam_session_options_default().threads == 1, "one thread by default");
    opts.threads = 3;
    stream_exactly(model, &opts, fx);
    opts.threads = 0;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    opts.threads = 65;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    /* Strips of one block split always, never, or when pushes come back to back (default):
     * the same bits each way. */
    CHECK(msclam_session_options_default().small_strips == MSCLAM_SMALL_STRIPS_BACK_TO_BACK,
          "small strips split back to back by default");
    const uint32_t modes[] = {MSCLAM_SMALL_STRIPS_ALWAYS, MSCLAM_SMALL_STRIPS_NEVER};
    opts.threads = 2;
    for (size_t m = 0; m < 2; m++) {
        opts.small_strips = modes[m];
        stream_exactly(model, &opts, fx);
    }
    opts.small_strips = 3;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    /* An options struct from before `small_strips` existed splits them back to back. */
    opts.struct_size = (uint32_t)offsetof(msclam_session_options, small_strips);
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    stream_and_compare(s, fx, 1);
    msclam_session_free(s);
    opts.struct_size = (uint32_t)sizeof opts;
    opts.small_strips = MSCLAM_SMALL_STRIPS_BACK_TO_BACK;
    /* An options struct from before `threads` existed means one thread. */
    opts.struct_size = (uint32_t)offsetof(msclam_session_options, threads);
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    stream_and_compare(s, fx, 1);
    msclam_session_free(s);

    /* NULL options mean defaults. */
    CHECK_STATUS(msclam_session_create(model, NULL, &s), MSCLAM_STATUS_OK);
    CHECK(msclam_session_capacity(s) == 100000, "default capacity");
    msclam_session_free(s);
}

static void test_session_errors(const fixture *fx, msclam_model *model) {
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = 10;
    msclam_session *s = NULL;
    CHECK_STATUS(msclam_session_create(NULL, &opts, &s), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_session_create(model, &opts, NULL), MSCLAM_STATUS_NULL_ARGUMENT);
    opts.isa = 99;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    opts.isa = MSCLAM_ISA_AUTO;
    opts.max_tiles = 0;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    opts.max_tiles = 10;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);

    float out[16];
    size_t count = 99;
    msclam_slide_result r = msclam_slide_result_init();
    CHECK_STATUS(msclam_session_finalize(s, &r), MSCLAM_STATUS_EMPTY_SESSION);
    CHECK_STATUS(msclam_session_tumor_probability(s, out), MSCLAM_STATUS_EMPTY_SESSION);
    CHECK_STATUS(msclam_session_copy_attention(s, out, 16, &count), MSCLAM_STATUS_EMPTY_SESSION);
    CHECK_STATUS(msclam_session_copy_tile_probabilities(s, out, 16, &count), MSCLAM_STATUS_OK);
    CHECK(count == 0, "no tiles yet");
    /* An empty push is fine, but there is no slide score to give before the first tile. */
    float p = 0.0f;
    CHECK_STATUS(msclam_session_push(s, NULL, 0, fx->dim, NULL, NULL, NULL, NULL), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_push(s, NULL, 0, fx->dim, NULL, NULL, NULL, &p), MSCLAM_STATUS_EMPTY_SESSION);
    CHECK(p == 0.0f, "no NaN written on an empty session: %g", p);

    const float *emb = fx->slide;
    const size_t d = fx->dim;
    CHECK_STATUS(msclam_session_push(s, emb, 4, d, fx->coords, out, NULL, NULL), MSCLAM_STATUS_OK);
    float before[4];
    memcpy(before, out, sizeof before);

    CHECK_STATUS(msclam_session_push(NULL, emb, 1, d, NULL, NULL, NULL, NULL), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_session_push(s, NULL, 1, d, fx->coords, NULL, NULL, NULL), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_session_push(s, emb, 1, d - 1, fx->coords, NULL, NULL, NULL), MSCLAM_STATUS_DIMENSION_MISMATCH);
    CHECK(strstr(msclam_last_error_message(), "expects 1024") != NULL, "dimension message: %s", msclam_last_error_message());
    CHECK_STATUS(msclam_session_push(s, emb, 1, d, NULL, NULL, NULL, NULL), MSCLAM_STATUS_INVALID_ARGUMENT); /* coords on other pushes */
    CHECK_STATUS(msclam_session_push(s, emb, 7, d, fx->coords, NULL, NULL, NULL), MSCLAM_STATUS_CAPACITY_EXCEEDED);
    float *nan_strip = (float *)malloc(3 * d * sizeof(float));
    memcpy(nan_strip, emb, 3 * d * sizeof(float));
    nan_strip[2 * d + 5] = NAN;
    float slide_prob = -1.0f;
    CHECK_STATUS(msclam_session_push(s, nan_strip, 3, d, fx->coords, out, NULL, &slide_prob), MSCLAM_STATUS_NON_FINITE_INPUT);
    CHECK(strstr(msclam_last_error_message(), "tile 2") != NULL, "NaN located: %s", msclam_last_error_message());
    CHECK(slide_prob == -1.0f, "outputs untouched on failure");
    nan_strip[2 * d + 5] = INFINITY;
    CHECK_STATUS(msclam_session_push(s, nan_strip, 3, d, fx->coords, NULL, NULL, NULL), MSCLAM_STATUS_NON_FINITE_INPUT);
    free(nan_strip);
    CHECK(msclam_session_tile_count(s) == 4, "rejected pushes changed nothing");
    CHECK_STATUS(msclam_session_copy_tile_probabilities(s, out, 16, &count), MSCLAM_STATUS_OK);
    CHECK(count == 4 && memcmp(out, before, sizeof before) == 0, "earlier tiles intact");

    CHECK_STATUS(msclam_session_copy_tile_probabilities(s, out, 3, &count), MSCLAM_STATUS_BUFFER_TOO_SMALL);
    CHECK(count == 4, "needed count reported");
    CHECK_STATUS(msclam_session_copy_tile_probabilities(s, NULL, 0, &count), MSCLAM_STATUS_BUFFER_TOO_SMALL);
    CHECK_STATUS(msclam_session_copy_tile_probabilities(s, NULL, 4, &count), MSCLAM_STATUS_NULL_ARGUMENT);
    r.struct_size = 0;
    CHECK_STATUS(msclam_session_finalize(s, &r), MSCLAM_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(msclam_session_finalize(s, NULL), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_session_reset(NULL), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK(msclam_session_tile_count(NULL) == 0, "NULL count");

    /* The session still works after every error, and matches a clean run of the same tiles. */
    CHECK_STATUS(msclam_session_push(s, emb + 4 * d, 6, d, fx->coords + 8, NULL, NULL, &slide_prob), MSCLAM_STATUS_OK);
    msclam_session *clean = NULL;
    CHECK_STATUS(msclam_session_create(model, &opts, &clean), MSCLAM_STATUS_OK);
    float clean_prob = -2.0f;
    CHECK_STATUS(msclam_session_push(clean, emb, 10, d, fx->coords, NULL, NULL, &clean_prob), MSCLAM_STATUS_OK);
    CHECK(fabsf(clean_prob - slide_prob) < 1e-6f, "after errors %g vs clean %g", slide_prob, clean_prob);
    msclam_session_free(clean);
    msclam_session_free(s);
    msclam_session_free(NULL);

    /* A struct_size that ends inside a field: only whole fields are read (max_tiles keeps
     * its default). */
    msclam_session_options partial = msclam_session_options_default();
    partial.max_tiles = 7;
    partial.struct_size = 12;
    CHECK_STATUS(msclam_session_create(model, &partial, &s), MSCLAM_STATUS_OK);
    CHECK(msclam_session_capacity(s) == 100000, "partial field ignored: capacity %zu", msclam_session_capacity(s));
    msclam_session_free(s);

    /* Absurd capacities are errors, never wrapped sizes. */
    msclam_session_options huge = msclam_session_options_default();
    huge.max_tiles = (size_t)878416384462353137ull;
    size_t size = 0;
    CHECK_STATUS(msclam_session_arena_size(model, &huge, &size), MSCLAM_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(msclam_session_create(model, &huge, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    huge.max_tiles = SIZE_MAX;
    CHECK_STATUS(msclam_session_arena_size(model, &huge, &size), MSCLAM_STATUS_INVALID_ARGUMENT);

    /* The input buffer may be reused for the output: probabilities land in its first floats. */
    opts.max_tiles = 4;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    float *strip = (float *)malloc(4 * d * sizeof(float));
    memcpy(strip, emb, 4 * d * sizeof(float));
    CHECK_STATUS(msclam_session_push(s, strip, 4, d, NULL, strip, NULL, NULL), MSCLAM_STATUS_OK);
    CHECK(memcmp(strip, before, sizeof before) == 0, "in-place output equals the separate-buffer output");
    free(strip);
    msclam_session_free(s);
}

static void test_arena(const fixture *fx, msclam_model *model) {
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = fx->tiles;
    size_t needed = 0;
    CHECK_STATUS(msclam_session_arena_size(model, &opts, &needed), MSCLAM_STATUS_OK);
    CHECK(needed > 21 * fx->tiles && needed < 21 * fx->tiles + 800000, "arena size %zu", needed);
    size_t alloc = (needed + 64 + 63) / 64 * 64;
    void *raw = NULL;
    CHECK(posix_memalign(&raw, MSCLAM_ARENA_ALIGNMENT, alloc) == 0, "arena allocated");
    unsigned char *arena = (unsigned char *)raw;
    msclam_session *s = NULL;
    CHECK_STATUS(msclam_session_create_in_arena(model, &opts, arena, needed - 1, &s), MSCLAM_STATUS_BUFFER_TOO_SMALL);
    CHECK(strstr(msclam_last_error_message(), "needed") != NULL, "size explained: %s", msclam_last_error_message());
    CHECK_STATUS(msclam_session_create_in_arena(model, &opts, arena + 8, needed, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(msclam_session_create_in_arena(model, &opts, NULL, needed, &s), MSCLAM_STATUS_NULL_ARGUMENT);
    opts.threads = 2; /* an arena session creates no thread */
    CHECK_STATUS(msclam_session_arena_size(model, &opts, &needed), MSCLAM_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(msclam_session_create_in_arena(model, &opts, arena, needed, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    opts.threads = 1;
    CHECK(s == NULL, "no session from failures");
    CHECK_STATUS(msclam_session_create_in_arena(model, &opts, arena, needed, &s), MSCLAM_STATUS_OK);
    CHECK((unsigned char *)s >= arena && (unsigned char *)s < arena + needed, "the handle lives in the arena");
    stream_and_compare(s, fx, 0);
    finalize_and_compare(s, fx);
    msclam_session_free(s);
    free(arena);
}

/* The same weights stored as bf16: widened in the kernels by default, AVX-512 BF16 dot
 * products on request; both close to the f32 model's outputs. */
static void test_bf16_model(const fixture *fx) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model_bf16.mscl", fx->dir);
    msclam_model *model = NULL;
    CHECK_STATUS(msclam_model_load(path, &model), MSCLAM_STATUS_OK);
    msclam_model_info info = msclam_model_info_init();
    CHECK_STATUS(msclam_model_get_info(model, &info), MSCLAM_STATUS_OK);
    CHECK(info.weight_dtype == MSCLAM_DTYPE_BF16, "bf16 weights: %u", info.weight_dtype);
    float *probs = (float *)malloc(fx->tiles * sizeof(float));
    for (uint32_t dot = 0; dot < 3; dot++) {
        msclam_session_options opts = msclam_session_options_default();
        opts.max_tiles = fx->tiles;
        opts.bf16_dot = dot;
        msclam_session *s = NULL;
        if (dot == 2) {
            CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
            continue;
        }
        CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
        float slide = -1.0f;
        CHECK_STATUS(msclam_session_push(s, fx->slide, fx->tiles, fx->dim, NULL, probs, NULL, &slide), MSCLAM_STATUS_OK);
        float worst = 0.0f;
        for (size_t t = 0; t < fx->tiles; t++) {
            float diff = fabsf(probs[t] - fx->tile_probs[t]);
            if (diff > worst) worst = diff;
        }
        CHECK(worst < 2e-2f, "bf16 (dot %u) tile probabilities within 2e-2 of f32: %g", dot, worst);
        CHECK(fabsf(slide - fx->slide_probs[fx->tumor_class]) < 1e-2f, "bf16 slide %g", slide);
        msclam_session_free(s);
    }
    free(probs);
    msclam_model_free(model);
}

/* The same weights stored as int8: integer kernels over inputs quantized per tile, close to
 * the f32 model's outputs. */
static void test_int8_model(const fixture *fx) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model_int8.mscl", fx->dir);
    msclam_model *model = NULL;
    CHECK_STATUS(msclam_model_load(path, &model), MSCLAM_STATUS_OK);
    msclam_model_info info = msclam_model_info_init();
    CHECK_STATUS(msclam_model_get_info(model, &info), MSCLAM_STATUS_OK);
    CHECK(info.weight_dtype == MSCLAM_DTYPE_INT8, "int8 weights: %u", info.weight_dtype);
    float *probs = (float *)malloc(fx->tiles * sizeof(float));
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = fx->tiles;
    msclam_session *s = NULL;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    float slide = -1.0f;
    CHECK_STATUS(msclam_session_push(s, fx->slide, fx->tiles, fx->dim, NULL, probs, NULL, &slide), MSCLAM_STATUS_OK);
    float worst = 0.0f;
    for (size_t t = 0; t < fx->tiles; t++) {
        float diff = fabsf(probs[t] - fx->tile_probs[t]);
        if (diff > worst) worst = diff;
    }
    CHECK(worst < 3e-2f, "int8 tile probabilities within 3e-2 of f32: %g", worst);
    CHECK(fabsf(slide - fx->slide_probs[fx->tumor_class]) < 1e-2f, "int8 slide %g", slide);
    msclam_session_free(s);
    free(probs);
    msclam_model_free(model);
}

/* A model with its training embeddings' statistics: the share of out-of-distribution tiles
 * is small for a slide like the training slides, and all of them for the same slide scaled by
 * 10. A model without statistics says NOT_FOUND, and -1 in the slide result. */
static void test_out_of_distribution(const fixture *fx, msclam_model *plain) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model_stats.mscl", fx->dir);
    msclam_model *model = NULL;
    CHECK_STATUS(msclam_model_load(path, &model), MSCLAM_STATUS_OK);
    msclam_model_info info = msclam_model_info_init();
    CHECK_STATUS(msclam_model_get_info(model, &info), MSCLAM_STATUS_OK);
    CHECK(info.has_embedding_statistics == 1 && info.format_version_minor == 1, "statistics");
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = fx->tiles;
    msclam_session *s = NULL;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    float share = -2.0f;
    size_t tiles = 0;
    CHECK_STATUS(msclam_session_out_of_distribution(s, &share, &tiles), MSCLAM_STATUS_EMPTY_SESSION);
    CHECK_STATUS(msclam_session_push(s, fx->slide, fx->tiles, fx->dim, NULL, NULL, NULL, NULL), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_out_of_distribution(s, &share, &tiles), MSCLAM_STATUS_OK);
    CHECK(share >= 0.0f && share < MSCLAM_OUT_OF_DISTRIBUTION_UNTRUSTED, "in distribution: %g", share);
    CHECK(fabsf(share - (float)tiles / (float)fx->tiles) < 1e-6f, "%zu tiles, share %g", tiles, share);
    msclam_slide_result r = msclam_slide_result_init();
    CHECK_STATUS(msclam_session_finalize(s, &r), MSCLAM_STATUS_OK);
    CHECK(r.out_of_distribution_fraction == share, "result %g", r.out_of_distribution_fraction);
    float *scaled = (float *)malloc(fx->tiles * fx->dim * sizeof(float));
    for (size_t i = 0; i < fx->tiles * fx->dim; i++) scaled[i] = 10.0f * fx->slide[i];
    msclam_session_reset(s);
    CHECK_STATUS(msclam_session_push(s, scaled, fx->tiles, fx->dim, NULL, NULL, NULL, NULL), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_out_of_distribution(s, &share, NULL), MSCLAM_STATUS_OK);
    CHECK(share > 0.9f, "values scaled by 10: %g", share);
    msclam_session_free(s);
    /* Switched off: no count, as for a model without statistics. */
    opts.check_embeddings = 0;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_push(s, scaled, 4, fx->dim, NULL, NULL, NULL, NULL), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_out_of_distribution(s, &share, NULL), MSCLAM_STATUS_NOT_FOUND);
    msclam_session_free(s);
    opts.check_embeddings = 2;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_INVALID_ARGUMENT);
    opts.check_embeddings = 1;
    free(scaled);
    msclam_model_free(model);

    CHECK_STATUS(msclam_session_create(plain, &opts, &s), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_push(s, fx->slide, 4, fx->dim, NULL, NULL, NULL, NULL), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_out_of_distribution(s, &share, &tiles), MSCLAM_STATUS_NOT_FOUND);
    r = msclam_slide_result_init();
    CHECK_STATUS(msclam_session_finalize(s, &r), MSCLAM_STATUS_OK);
    CHECK(r.out_of_distribution_fraction == -1.0f, "no statistics: %g", r.out_of_distribution_fraction);
    msclam_session_free(s);
}

static void test_session_outlives_model(const fixture *fx) {
    msclam_model *model = NULL;
    CHECK_STATUS(msclam_model_load(fx->model_path, &model), MSCLAM_STATUS_OK);
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = fx->tiles;
    msclam_session *s = NULL;
    CHECK_STATUS(msclam_session_create(model, &opts, &s), MSCLAM_STATUS_OK);
    msclam_model_free(model); /* the session keeps the weights alive */
    stream_and_compare(s, fx, 0);
    finalize_and_compare(s, fx);
    msclam_session_free(s);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    fixture fx = load_fixture(argv[1]);
    test_version_and_statuses();
    test_encoder_is_unsupported_without_onnx();
    test_model_loading_and_metadata(&fx);
    msclam_model *model = NULL;
    CHECK_STATUS(msclam_model_load(fx.model_path, &model), MSCLAM_STATUS_OK);
    test_streaming(&fx, model);
    test_session_errors(&fx, model);
    test_arena(&fx, model);
    test_out_of_distribution(&fx, model);
    msclam_model_free(model);
    test_session_outlives_model(&fx);
    test_bf16_model(&fx);
    test_int8_model(&fx);
    free_fixture(&fx);
    return finish("test_api");
}
