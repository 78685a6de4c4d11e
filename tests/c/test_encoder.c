/* The ONNX tile encoder through the C API (a libmsclam built with the `onnx` feature).
 * Usage: test_encoder FIXTURE_DIR ENCODER_DIR
 *   FIXTURE_DIR: c_fixtures' output (model_encoder.mscl: D 48, embedder "small_cnn";
 *                model.mscl: D 1024)
 *   ENCODER_DIR: onnx/tests/onnx_reference.py encoders' output (small_cnn.onnx, 64 x 64 BGR
 *                tiles with its own mean/std; small_cnn.tiles.u8; small_cnn.embeddings.f32,
 *                PyTorch's embeddings of those tiles)
 * Pushing the RGB tiles must give the tile probabilities of pushing PyTorch's embeddings. */
#include "check.h"

#define TILES 21
#define SIZE 64
#define DIM 48

static msclam_encoder_options small_cnn_options(void) {
    msclam_encoder_options o = msclam_encoder_options_default();
    o.tile_size = SIZE;
    o.channel_order = MSCLAM_CHANNELS_BGR;
    o.batch = 8;
    const float mean[3] = {0.70f, 0.55f, 0.75f}, std[3] = {0.15f, 0.20f, 0.18f};
    memcpy(o.mean, mean, sizeof mean);
    memcpy(o.std, std, sizeof std);
    return o;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_encoder FIXTURE_DIR ENCODER_DIR\n");
        return 2;
    }
    char path[4096];
    size_t len = 0;
    uint8_t *rgb = (uint8_t *)read_file(argv[2], "small_cnn.tiles.u8", &len);
    CHECK(len == (size_t)TILES * SIZE * SIZE * 3, "tiles file: %zu bytes", len);
    float *pytorch = (float *)read_file(argv[2], "small_cnn.embeddings.f32", &len);
    CHECK(len == (size_t)TILES * DIM * sizeof(float), "embeddings file: %zu bytes", len);

    msclam_model *model = NULL, *other = NULL;
    snprintf(path, sizeof path, "%s/model_encoder.mscl", argv[1]);
    CHECK_STATUS(msclam_model_load(path, &model), MSCLAM_STATUS_OK);
    snprintf(path, sizeof path, "%s/model.mscl", argv[1]);
    CHECK_STATUS(msclam_model_load(path, &other), MSCLAM_STATUS_OK);

    msclam_encoder_options options = small_cnn_options();
    msclam_encoder *encoder = NULL;
    snprintf(path, sizeof path, "%s/small_cnn.onnx", argv[2]);
    CHECK_STATUS(msclam_encoder_load(path, "small_cnn", &options, &encoder), MSCLAM_STATUS_OK);
    CHECK(msclam_encoder_embedding_dim(encoder) == DIM, "dim %zu", msclam_encoder_embedding_dim(encoder));
    CHECK(msclam_encoder_embedding_dim(NULL) == 0, "NULL encoder");

    msclam_session_options so = msclam_session_options_default();
    so.max_tiles = TILES;
    msclam_session *from_pixels = NULL, *from_embeddings = NULL;
    CHECK_STATUS(msclam_session_create(model, &so, &from_pixels), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_create(model, &so, &from_embeddings), MSCLAM_STATUS_OK);

    /* RGB tiles in two strips (13 + 8: the encoder's batches of 8 are padded). */
    float probs[TILES], want[TILES], slide = -1.0f, want_slide = -2.0f;
    size_t first = 13;
    CHECK_STATUS(msclam_session_push_rgb(from_pixels, encoder, rgb, first, NULL, probs, &slide),
                 MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_push_rgb(from_pixels, encoder, rgb + first * SIZE * SIZE * 3,
                                         TILES - first, NULL, probs + first, &slide),
                 MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_push(from_embeddings, pytorch, TILES, DIM, NULL, want, NULL, &want_slide),
                 MSCLAM_STATUS_OK);
    float worst = 0.0f;
    for (int i = 0; i < TILES; i++)
        worst = fmaxf(worst, fabsf(probs[i] - want[i]));
    CHECK(worst < 1e-4f, "tile probabilities from pixels vs from PyTorch's embeddings: %g", worst);
    CHECK(fabsf(slide - want_slide) < 1e-4f, "slide %g vs %g", slide, want_slide);
    CHECK(msclam_session_tile_count(from_pixels) == TILES, "tiles pushed");

    /* A model of another dimension, or of another embedder: refused, the session unchanged. */
    msclam_session *wrong = NULL;
    so.max_tiles = 4;
    CHECK_STATUS(msclam_session_create(other, &so, &wrong), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_push_rgb(wrong, encoder, rgb, 1, NULL, NULL, NULL),
                 MSCLAM_STATUS_DIMENSION_MISMATCH);
    CHECK(msclam_session_tile_count(wrong) == 0, "nothing pushed");
    msclam_encoder *misnamed = NULL;
    snprintf(path, sizeof path, "%s/small_cnn.onnx", argv[2]);
    CHECK_STATUS(msclam_encoder_load(path, "uni_v1", &options, &misnamed), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_reset(from_embeddings), MSCLAM_STATUS_OK);
    CHECK_STATUS(msclam_session_push_rgb(from_embeddings, misnamed, rgb, 1, NULL, NULL, NULL),
                 MSCLAM_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(msclam_last_error_message(), "uni_v1") != NULL, "message names the embedder: %s",
          msclam_last_error_message());
    CHECK(msclam_session_tile_count(from_embeddings) == 0, "the session is unchanged");

    /* Bad arguments. */
    msclam_encoder *none = NULL;
    CHECK_STATUS(msclam_encoder_load("/nonexistent/encoder.onnx", NULL, NULL, &none), MSCLAM_STATUS_IO_ERROR);
    snprintf(path, sizeof path, "%s/model.mscl", argv[1]);
    CHECK_STATUS(msclam_encoder_load(path, NULL, NULL, &none), MSCLAM_STATUS_INVALID_MODEL);
    CHECK(none == NULL, "nothing returned on failure");
    options.channel_order = 7;
    CHECK_STATUS(msclam_encoder_load(path, NULL, &options, &none), MSCLAM_STATUS_INVALID_ARGUMENT);
    options = small_cnn_options();
    options.struct_size = 4;
    CHECK_STATUS(msclam_encoder_load(path, NULL, &options, &none), MSCLAM_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(msclam_session_push_rgb(from_pixels, NULL, rgb, 1, NULL, NULL, NULL), MSCLAM_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(msclam_session_push_rgb(from_pixels, encoder, NULL, 1, NULL, NULL, NULL),
                 MSCLAM_STATUS_NULL_ARGUMENT);

    msclam_session_free(wrong);
    msclam_session_free(from_pixels);
    msclam_session_free(from_embeddings);
    msclam_encoder_free(misnamed);
    msclam_encoder_free(encoder);
    msclam_encoder_free(NULL);
    msclam_model_free(model);
    msclam_model_free(other);
    free(rgb);
    free(pytorch);
    return finish("test_encoder");
}
