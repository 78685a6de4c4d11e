/*
 * stream_slide.c: the loop a scanner integration writes, using msclam's C API.
 *
 *   stream_slide <model.mscl> <embeddings.f32> [coords.u32] [tiles_per_strip]
 *
 * embeddings.f32 holds the slide's tile embeddings as raw little-endian floats, tile after
 * tile (the scanner's embedder produces these while it scans); coords.u32 optionally holds
 * an (x, y) pair per tile. Build against an installed msclam:
 *
 *   cc stream_slide.c $(pkg-config --cflags --libs msclam) -o stream_slide
 */
#include <stdio.h>
#include <stdlib.h>

#include "msclam.h"

/* Reports a failed call with the library's explanation and exits. */
static void check(msclam_status status, const char *what) {
    if (status != MSCLAM_STATUS_OK) {
        fprintf(stderr, "%s failed: %s (%s)\n", what, msclam_status_string(status),
                msclam_last_error_message());
        exit(1);
    }
}

static void *read_all(const char *path, size_t *out_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(len > 0 ? (size_t)len : 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    *out_len = (size_t)len;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s <model.mscl> <embeddings.f32> [coords.u32] [tiles_per_strip]\n", argv[0]);
        return 2;
    }
    /* 1. Load the model once, at start-up. It is immutable and may be shared by threads. */
    msclam_model *model = NULL;
    check(msclam_model_load(argv[1], &model), "msclam_model_load");
    msclam_model_info info = msclam_model_info_init();
    check(msclam_model_get_info(model, &info), "msclam_model_get_info");
    char embedder[128] = "unknown";
    size_t len = 0;
    msclam_model_metadata_get(model, "embedder.name", embedder, sizeof embedder, &len);
    printf("msclam %s: model D=%u H=%u K=%u, %u classes, embedder %s\n", msclam_version_string(),
           info.input_dim, info.hidden_dim, info.attention_dim, info.num_classes, embedder);

    /* The slide the scanner will produce (here: read from files). */
    size_t bytes = 0, coord_bytes = 0;
    float *embeddings = (float *)read_all(argv[2], &bytes);
    uint32_t *coords = argc > 3 ? (uint32_t *)read_all(argv[3], &coord_bytes) : NULL;
    const size_t dim = info.input_dim;
    const size_t tiles = bytes / (dim * sizeof(float));
    const size_t strip = argc > 4 ? (size_t)strtoul(argv[4], NULL, 10) : 64;
    if (tiles == 0 || strip == 0 || (coords && coord_bytes != tiles * 2 * sizeof(uint32_t))) {
        fprintf(stderr, "embeddings/coordinates do not fit a %zu-dim model\n", dim);
        return 1;
    }

    /* 2. One session per scanner thread, sized for the largest slide. All of its memory is
     *    allocated here; nothing is allocated while slides stream. */
    msclam_session_options opts = msclam_session_options_default();
    opts.max_tiles = tiles;
    msclam_session *session = NULL;
    check(msclam_session_create(model, &opts, &session), "msclam_session_create");

    /* 3. While the scanner scans: push each strip as it arrives, get its tiles' tumor
     *    probabilities and the slide's current score at once. */
    float *strip_probs = (float *)malloc(strip * sizeof(float));
    for (size_t start = 0, i = 0; start < tiles; start += strip, i++) {
        size_t n = start + strip <= tiles ? strip : tiles - start;
        float slide_prob = 0.0f;
        check(msclam_session_push(session, embeddings + start * dim, n, dim,
                                  coords ? coords + 2 * start : NULL, strip_probs, NULL, &slide_prob),
              "msclam_session_push");
        size_t hot = 0;
        for (size_t t = 0; t < n; t++) hot += strip_probs[t] >= info.threshold;
        printf("strip %3zu: tiles %5zu..%-5zu  slide P(tumor) %.4f  tumor tiles in strip %zu\n", i,
               start, start + n, slide_prob, hot);
    }

    /* 4. End of slide: the result, then the attention map and the tumor mask. */
    msclam_slide_result result = msclam_slide_result_init();
    check(msclam_session_finalize(session, &result), "msclam_session_finalize");
    float *attention = (float *)malloc(tiles * sizeof(float));
    uint8_t *mask = (uint8_t *)malloc(tiles);
    size_t count = 0;
    check(msclam_session_copy_attention(session, attention, tiles, &count), "copy_attention");
    check(msclam_session_copy_tile_mask(session, mask, tiles, &count), "copy_tile_mask");
    size_t top = 0;
    for (size_t t = 1; t < tiles; t++)
        if (attention[t] > attention[top]) top = t;
    printf("slide: class %u, P(tumor) %.4f, %zu of %zu tiles in the tumor mask\n", result.predicted_class,
           result.tumor_probability, result.tumor_tiles, result.num_tiles);
    printf("most attended tile: %zu (attention %.5f, in mask: %s)\n", top, attention[top], mask[top] ? "yes" : "no");

    /* 5. Next slide: msclam_session_reset(session) and stream again. At shutdown: */
    msclam_session_free(session);
    msclam_model_free(model);
    free(strip_probs);
    free(attention);
    free(mask);
    free(embeddings);
    free(coords);
    return 0;
}
