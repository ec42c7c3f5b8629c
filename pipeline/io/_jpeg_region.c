/* Decode one rectangle of a JPEG with libjpeg-turbo (m2es crop stage).
 *
 * The crop stage needs only the face box of each frame. libjpeg-turbo can skip the
 * IDCT, upsampling and colour conversion of the rows above and below a rectangle
 * (jpeg_skip_scanlines) and of the iMCU columns left and right of it
 * (jpeg_crop_scanline); the entropy decoding of the rows down to the rectangle's last
 * one is still done, the rows below it are not read at all. The pixels inside the
 * rectangle are the ones a full decode gives, except within a few pixels of the decoded
 * area's edges, where the chroma upsampling sees the edge instead of the neighbouring
 * pixels; the Python side (pipeline/jpeg_region.py) asks for a margin around the
 * rectangle it needs and the tests compare against OpenCV's full decode.
 *
 * Two functions, both releasing the GIL while libjpeg runs:
 *   header(data, scale_denom) -> (width, height, components, usable)
 *   decode(data, scale_denom, gray, x0, y0, x1, y1) -> (bytearray, x, y, width, height, channels)
 * Coordinates are in pixels of the image decoded at 1/scale_denom. ``usable`` is 0 for
 * files this module leaves to OpenCV (an Exif orientation, CMYK/YCCK colour); decode
 * raises ValueError for them and for corrupt data (libjpeg's message in the text).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} error_mgr;

static void on_error(j_common_ptr cinfo)
{
    error_mgr *err = (error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo)
{
    /* warnings (corrupt but decodable data) are ignored, as OpenCV ignores them */
    (void)cinfo;
}

typedef struct {
    const unsigned char *data;
    size_t size;
    int scale_denom;
    int gray;
    /* requested rectangle [x0, x1) x [y0, y1) in output pixels; x1 <= 0 means the whole image */
    int x0, y0, x1, y1;
    /* results */
    int width, height, components, usable;
    int out_x, out_y, out_w, out_h, channels;
    unsigned char *pixels;
    char message[JMSG_LENGTH_MAX];
} job_t;

static int exif_orientation_present(j_decompress_ptr cinfo)
{
    jpeg_saved_marker_ptr m;
    for (m = cinfo->marker_list; m != NULL; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0)
            return 1;
    }
    return 0;
}

/* Runs without the GIL. Returns 0 on success, -1 with job->message set on failure. */
static int run_job(job_t *job, int want_pixels)
{
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    JSAMPROW row;
    JDIMENSION xoff, width, skipped;
    int rows_done;

    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.output_message = on_message;
    err.message[0] = '\0';
    job->pixels = NULL;
    if (setjmp(err.jump)) {
        strncpy(job->message, err.message, sizeof(job->message) - 1);
        job->message[sizeof(job->message) - 1] = '\0';
        jpeg_destroy_decompress(&cinfo);
        if (job->pixels != NULL) {
            PyMem_RawFree(job->pixels);
            job->pixels = NULL;
        }
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, job->data, (unsigned long)job->size);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)job->scale_denom;
    job->components = cinfo.num_components;
    job->usable = !exif_orientation_present(&cinfo) &&
                  cinfo.jpeg_color_space != JCS_CMYK && cinfo.jpeg_color_space != JCS_YCCK;
    if (job->gray) {
        cinfo.out_color_space = JCS_GRAYSCALE;
        job->channels = 1;
    } else {
        cinfo.out_color_space = JCS_EXT_RGB;
        job->channels = 3;
    }
    jpeg_calc_output_dimensions(&cinfo);
    job->width = (int)cinfo.output_width;
    job->height = (int)cinfo.output_height;
    if (!want_pixels || !job->usable) {
        jpeg_destroy_decompress(&cinfo);
        if (want_pixels) {
            snprintf(job->message, sizeof(job->message), "image with Exif data or CMYK colour");
            return -1;
        }
        return 0;
    }

    if (job->x1 <= 0) {
        job->x0 = 0;
        job->y0 = 0;
        job->x1 = job->width;
        job->y1 = job->height;
    }
    if (job->x0 < 0) job->x0 = 0;
    if (job->y0 < 0) job->y0 = 0;
    if (job->x1 > job->width) job->x1 = job->width;
    if (job->y1 > job->height) job->y1 = job->height;
    if (job->x1 <= job->x0 || job->y1 <= job->y0) {
        jpeg_destroy_decompress(&cinfo);
        snprintf(job->message, sizeof(job->message), "rectangle lies outside the %dx%d image",
                 job->width, job->height);
        return -1;
    }

    jpeg_start_decompress(&cinfo);
    xoff = (JDIMENSION)job->x0;
    width = (JDIMENSION)(job->x1 - job->x0);
    if (xoff != 0 || width != cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &xoff, &width); /* widens to whole iMCU columns */
    job->out_x = (int)xoff;
    job->out_w = (int)cinfo.output_width;
    job->out_y = job->y0;
    job->out_h = job->y1 - job->y0;
    job->pixels = (unsigned char *)PyMem_RawMalloc((size_t)job->out_w * job->out_h * job->channels);
    if (job->pixels == NULL) {
        jpeg_destroy_decompress(&cinfo);
        snprintf(job->message, sizeof(job->message), "out of memory");
        return -1;
    }
    if (job->y0 > 0) {
        skipped = jpeg_skip_scanlines(&cinfo, (JDIMENSION)job->y0);
        if ((int)skipped != job->y0) {
            snprintf(err.message, sizeof(err.message), "could skip only %u of %d rows", skipped, job->y0);
            longjmp(err.jump, 1);
        }
    }
    rows_done = 0;
    while (rows_done < job->out_h) {
        row = job->pixels + (size_t)rows_done * job->out_w * job->channels;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            snprintf(err.message, sizeof(err.message), "no data for row %d", job->y0 + rows_done);
            longjmp(err.jump, 1);
        }
        rows_done++;
    }
    /* the rows below the rectangle are not needed: stop here */
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static int parse_common(PyObject *args, Py_buffer *buf, job_t *job, int with_rect)
{
    memset(job, 0, sizeof(*job));
    if (with_rect) {
        if (!PyArg_ParseTuple(args, "y*iiiiii", buf, &job->scale_denom, &job->gray,
                              &job->x0, &job->y0, &job->x1, &job->y1))
            return -1;
    } else {
        if (!PyArg_ParseTuple(args, "y*i", buf, &job->scale_denom))
            return -1;
    }
    if (job->scale_denom != 1 && job->scale_denom != 2 && job->scale_denom != 4 && job->scale_denom != 8) {
        PyBuffer_Release(buf);
        PyErr_SetString(PyExc_ValueError, "scale_denom must be 1, 2, 4 or 8");
        return -1;
    }
    job->data = (const unsigned char *)buf->buf;
    job->size = (size_t)buf->len;
    return 0;
}

/* Parses the arguments and runs the job without the GIL; 0 on success, -1 with a Python error set. */
static int parse_and_run(PyObject *args, job_t *job, int with_rect)
{
    Py_buffer buf;
    int rc;
    if (parse_common(args, &buf, job, with_rect) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    rc = run_job(job, with_rect);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (rc < 0) {
        PyErr_Format(PyExc_ValueError, "not a decodable JPEG (%s)", job->message);
        return -1;
    }
    return 0;
}

static PyObject *jr_header(PyObject *self, PyObject *args)
{
    job_t job;
    (void)self;
    if (parse_and_run(args, &job, 0) < 0)
        return NULL;
    return Py_BuildValue("(iiii)", job.width, job.height, job.components, job.usable);
}

static PyObject *jr_decode(PyObject *self, PyObject *args)
{
    job_t job;
    PyObject *pixels, *result;
    (void)self;
    if (parse_and_run(args, &job, 1) < 0)
        return NULL;
    pixels = PyByteArray_FromStringAndSize((const char *)job.pixels,
                                           (Py_ssize_t)job.out_w * job.out_h * job.channels);
    PyMem_RawFree(job.pixels);
    if (pixels == NULL)
        return NULL;
    result = Py_BuildValue("(Oiiiii)", pixels, job.out_x, job.out_y, job.out_w, job.out_h, job.channels);
    Py_DECREF(pixels);
    return result;
}

static PyMethodDef methods[] = {
    {"header", jr_header, METH_VARARGS,
     "header(data, scale_denom) -> (width, height, components, usable) of the image at 1/scale_denom."},
    {"decode", jr_decode, METH_VARARGS,
     "decode(data, scale_denom, gray, x0, y0, x1, y1) -> (bytearray, x, y, width, height, channels).\n"
     "Rows y0..y1 and (at least) columns x0..x1 of the image decoded at 1/scale_denom; x1 <= 0: all."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg_region", "Decode one rectangle of a JPEG with libjpeg-turbo.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jpeg_region(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION_NUMBER",
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
                                LIBJPEG_TURBO_VERSION_NUMBER
#else
                                0
#endif
                                ) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
