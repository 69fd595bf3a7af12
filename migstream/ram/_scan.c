/*
 * Compiled scanner of RAM page records: the hot loop of RamDecoder.read_section;
 * and the writer of page intervals to an image file (write_pages, further down).
 *
 * QEMU: migration/ram.c (ram_load_precopy, ram_save_page, save_zero_page)
 *
 * scan(buf, pos, end, page_size, sizes, by_name, current_block)
 *   -> (pos, current_block, columns, pages, zero, zero_nonzero_fill, xbzrle, compressed)
 *
 * Walks PAGE, ZERO, XBZRLE and COMPRESS_PAGE records (with or without
 * CONTINUE) from ``pos`` and merges them into runs exactly as the pure Python
 * decoder does.  It stops *before* the first record it does not take (any
 * other flag, an unknown block, an offset past its block, a length over its
 * cap, a record crossing ``end``, ...) and returns that record's position; the
 * Python decoder then reads it and raises its precise error.  It also stops after
 * MAX_RUNS_PER_CALL runs, so what one call holds stays bounded.  ``columns`` is a
 * bytes object of n native int64 values of each of block, addr, count, kind,
 * offset, stride, skip, aux, column after column.  Every read is bounds-checked against ``end`` (itself clamped
 * to the buffer length).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* RAM_SAVE_FLAG_* (declared for Python in migstream/wire/constants.py) */
#define F_ZERO 0x002u
#define F_PAGE 0x008u
#define F_CONTINUE 0x020u
#define F_XBZRLE 0x040u
#define F_COMPRESS_PAGE 0x100u
#define ENCODING_FLAG_XBZRLE 0x01u
/* Same cap as MAX_COMPRESSED_PAGE in records.py. */
#define MAX_COMPRESSED_PAGE ((uint64_t)1 << 20)
/* Page sizes the scanner takes; anything else is left to Python. */
#define MAX_PAGE_SIZE ((uint64_t)1 << 30)

/* PageKind values (migstream/ram/model.py). */
enum { KIND_PAGE = 1, KIND_ZERO = 2, KIND_XBZRLE = 3, KIND_COMPRESS = 4 };

#define ROW_FIELDS 8
/* Runs returned by one call at most (64 MiB of rows): the caller calls again. */
#define MAX_RUNS_PER_CALL ((size_t)1 << 20)

typedef struct {
    int64_t *data;
    size_t n;   /* rows */
    size_t cap; /* rows */
} Rows;

static int rows_push(Rows *r, int64_t block, int64_t addr, int64_t count, int64_t kind, int64_t offset,
                     int64_t stride, int64_t skip, int64_t aux)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        if (cap > (SIZE_MAX / sizeof(int64_t)) / ROW_FIELDS) {
            PyErr_NoMemory();
            return -1;
        }
        int64_t *d = PyMem_Realloc(r->data, cap * ROW_FIELDS * sizeof(int64_t));
        if (d == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->data = d;
        r->cap = cap;
    }
    int64_t *row = r->data + r->n * ROW_FIELDS;
    row[0] = block;
    row[1] = addr;
    row[2] = count;
    row[3] = kind;
    row[4] = offset;
    row[5] = stride;
    row[6] = skip;
    row[7] = aux;
    r->n++;
    return 0;
}

static inline uint64_t rd64(const unsigned char *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) | ((uint64_t)p[3] << 32) |
           ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) | ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

static inline uint32_t rd32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Block index for a counted name, as Python finds it: decode (UTF-8, backslashreplace), look up.
 * Returns the index, -1 when unknown (or not a usable index), -2 on a Python error. */
static Py_ssize_t lookup_block(PyObject *by_name, const unsigned char *name, Py_ssize_t len,
                               Py_ssize_t nblocks)
{
    PyObject *key = PyUnicode_DecodeUTF8((const char *)name, len, "backslashreplace");
    if (key == NULL)
        return -2;
    PyObject *val = PyDict_GetItemWithError(by_name, key); /* borrowed */
    Py_DECREF(key);
    if (val == NULL)
        return PyErr_Occurred() ? -2 : -1;
    if (!PyLong_Check(val))
        return -1;
    Py_ssize_t i = PyLong_AsSsize_t(val);
    if (i == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (i < 0 || i >= nblocks)
        return -1;
    return i;
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer buf, sizes_buf;
    Py_ssize_t pos, end, current;
    unsigned long long page_size;
    PyObject *by_name;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*nnKy*O!n", &buf, &pos, &end, &page_size, &sizes_buf, &PyDict_Type,
                          &by_name, &current))
        return NULL;

    Rows rows = {NULL, 0, 0};
    uint64_t n_pages = 0, n_zero = 0, n_zero_fill = 0, n_xbzrle = 0, n_comp = 0;
    PyObject *result = NULL;

    const unsigned char *b = (const unsigned char *)buf.buf;
    if (end > buf.len)
        end = buf.len;
    const uint64_t *sizes = (const uint64_t *)sizes_buf.buf;
    Py_ssize_t nblocks = sizes_buf.len / 8; /* an array('Q') */
    const uint64_t ps = page_size;
    int usable = pos >= 0 && ps >= 2 && ps <= MAX_PAGE_SIZE && (ps & (ps - 1)) == 0;
    const uint64_t mask = ps - 1;

    /* The last name looked up, so a run of named records decodes it once. */
    const unsigned char *last_name = NULL;
    Py_ssize_t last_len = -1, last_index = -1;

    while (usable && pos < end && rows.n < MAX_RUNS_PER_CALL) {
        const Py_ssize_t start = pos;
        if (end - start < 8)
            break;
        const uint64_t word = rd64(b + start);
        const uint64_t flags = word & mask;
        const uint64_t addr = word & ~mask;
        const uint64_t kind = flags & ~(uint64_t)F_CONTINUE;
        if (kind != F_PAGE && kind != F_ZERO && kind != F_XBZRLE && kind != F_COMPRESS_PAGE)
            break;
        const int cont = (flags & F_CONTINUE) != 0;
        Py_ssize_t head = 8;
        Py_ssize_t bi;
        if (cont) {
            bi = current;
            if (bi < 0 || bi >= nblocks)
                break;
        } else {
            if (end - start < 9)
                break;
            Py_ssize_t len = b[start + 8];
            if (end - start - 9 < len)
                break;
            const unsigned char *name = b + start + 9;
            if (last_name != NULL && len == last_len && memcmp(name, last_name, (size_t)len) == 0) {
                bi = last_index;
            } else {
                bi = lookup_block(by_name, name, len, nblocks);
                if (bi == -2)
                    goto done;
                last_name = name;
                last_len = len;
                last_index = bi;
            }
            if (bi < 0)
                break;
            head = 9 + len;
        }
        const uint64_t size = sizes[bi];
        if (addr >= size || addr > (uint64_t)INT64_MAX)
            break;
        const Py_ssize_t left = end - start; /* >= head */

        if (kind == F_PAGE || kind == F_ZERO) {
            const int zero = kind == F_ZERO;
            const uint64_t body = zero ? 1 : ps;
            if ((uint64_t)(left - head) < body)
                break;
            const Py_ssize_t stride = head + (Py_ssize_t)body;
            const int fill = zero ? b[start + head] : -1;
            uint64_t count = 1;
            if (cont) {
                /* Records that continue the run: same flags, next pages, same fill byte,
                 * whole pages inside the block, whole records before ``end``. */
                uint64_t lim = (size - addr) / ps;
                uint64_t fit = (uint64_t)(left / stride);
                if (fit < lim)
                    lim = fit;
                const unsigned char *p = b + start + stride;
                uint64_t want = word + ps;
                while (count < lim && rd64(p) == want && (!zero || p[8] == fill)) {
                    count++;
                    p += stride;
                    want += ps;
                }
            }
            if (rows_push(&rows, bi, (int64_t)addr, (int64_t)count, zero ? KIND_ZERO : KIND_PAGE, start, stride,
                          head, zero ? fill : 0) < 0)
                goto done;
            if (zero) {
                n_zero += count;
                if (fill)
                    n_zero_fill += count;
            } else {
                n_pages += count;
            }
            pos = start + (Py_ssize_t)count * stride;
        } else if (kind == F_XBZRLE) {
            if (left - head < 3)
                break;
            if (b[start + head] != ENCODING_FLAG_XBZRLE)
                break;
            uint64_t n = ((uint64_t)b[start + head + 1] << 8) | b[start + head + 2];
            if (n > ps || (uint64_t)(left - head - 3) < n)
                break;
            if (rows_push(&rows, bi, (int64_t)addr, 1, KIND_XBZRLE, start, 0, head + 3, (int64_t)n) < 0)
                goto done;
            n_xbzrle++;
            pos = start + head + 3 + (Py_ssize_t)n;
        } else {
            if (left - head < 4)
                break;
            uint64_t n = rd32(b + start + head);
            if (n > MAX_COMPRESSED_PAGE || (uint64_t)(left - head - 4) < n)
                break;
            if (rows_push(&rows, bi, (int64_t)addr, 1, KIND_COMPRESS, start, 0, head + 4, (int64_t)n) < 0)
                goto done;
            n_comp++;
            pos = start + head + 4 + (Py_ssize_t)n;
        }
        current = bi;
    }

    {
        /* Column-major: n blocks, then n addrs, ... (what RunTable.extend_columns takes). */
        PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(rows.n * ROW_FIELDS * sizeof(int64_t)));
        if (data != NULL) {
            int64_t *out = (int64_t *)PyBytes_AS_STRING(data);
            for (size_t f = 0; f < ROW_FIELDS; f++)
                for (size_t i = 0; i < rows.n; i++)
                    out[f * rows.n + i] = rows.data[i * ROW_FIELDS + f];
            result = Py_BuildValue("nnNKKKKK", pos, current, data, (unsigned long long)n_pages,
                                   (unsigned long long)n_zero, (unsigned long long)n_zero_fill,
                                   (unsigned long long)n_xbzrle, (unsigned long long)n_comp);
        }
    }
done:
    PyMem_Free(rows.data);
    PyBuffer_Release(&sizes_buf);
    PyBuffer_Release(&buf);
    return result;
}

/* page_totals(block, kind, count, nblocks) -> [(block, kind, pages), ...] or None
 *
 * Sums run counts per (block, kind) over run-table columns (int64 buffers), in the
 * order each pair first appears; runs of blocks outside 0..nblocks-1 are left out.
 * None when a kind is outside 0..7 or a sum would overflow (Python then sums). */
#define NKINDS 8

static PyObject *page_totals(PyObject *self, PyObject *args)
{
    Py_buffer bb, kb, cb;
    Py_ssize_t nblocks;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*n", &bb, &kb, &cb, &nblocks))
        return NULL;
    PyObject *result = NULL;
    int64_t *totals = NULL;
    int32_t *order = NULL;
    Py_ssize_t n = bb.len / 8;
    if (kb.len / 8 < n)
        n = kb.len / 8;
    if (cb.len / 8 < n)
        n = cb.len / 8;
    if (nblocks < 0)
        nblocks = 0;
    if (nblocks > (1 << 20)) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    {
        size_t slots = (size_t)nblocks * NKINDS + 1;
        totals = PyMem_Calloc(slots, sizeof(int64_t));
        order = PyMem_Calloc(slots, sizeof(int32_t));
        if (totals == NULL || order == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        unsigned char *seen = (unsigned char *)PyMem_Calloc(slots, 1);
        if (seen == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        size_t npairs = 0;
        const int64_t *blk = (const int64_t *)bb.buf, *knd = (const int64_t *)kb.buf, *cnt = (const int64_t *)cb.buf;
        int bad = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t b, k, c;
            memcpy(&b, blk + i, 8);
            memcpy(&k, knd + i, 8);
            memcpy(&c, cnt + i, 8);
            if (b < 0 || b >= nblocks)
                continue;
            if (k < 0 || k >= NKINDS) {
                bad = 1;
                break;
            }
            size_t slot = (size_t)b * NKINDS + (size_t)k;
            if (!seen[slot]) {
                seen[slot] = 1;
                order[npairs++] = (int32_t)slot;
            }
            if (__builtin_add_overflow(totals[slot], c, &totals[slot])) {
                bad = 1;
                break;
            }
        }
        PyMem_Free(seen);
        if (bad) {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        result = PyList_New((Py_ssize_t)npairs);
        if (result == NULL)
            goto done;
        for (size_t j = 0; j < npairs; j++) {
            size_t slot = (size_t)order[j];
            PyObject *t = Py_BuildValue("nnL", (Py_ssize_t)(slot / NKINDS), (Py_ssize_t)(slot % NKINDS),
                                        (long long)totals[slot]);
            if (t == NULL) {
                Py_CLEAR(result);
                goto done;
            }
            PyList_SET_ITEM(result, (Py_ssize_t)j, t);
        }
    }
done:
    PyMem_Free(totals);
    PyMem_Free(order);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&cb);
    return result;
}

/* write_pages(buf, fd, dst, src, stride, count, page_size) -> bytes written
 *
 * Writes DATA intervals of one source buffer to a file: interval i is count[i]
 * pages, page k read at buf[src[i] + k * stride[i]] and written at file offset
 * dst[i] + k * page_size.  The columns are native int64 buffers of one length.
 * Every source range is checked against the buffer (and every destination
 * against the largest file offset) before anything is written: ValueError on a
 * violation.  The pages go out with pwritev straight from the buffer, up to
 * IOV_MAX pieces per call: adjacent pieces in the source share one iovec, and
 * pieces whose destinations follow each other share one call; only long runs of
 * pages at a stride are gathered into a staging buffer first (see stage_write).  The GIL is
 * released while writing (taken back now and then to see to signals); short
 * writes and EINTR are retried; any other failure raises OSError. */
#define WRITE_BATCH_BYTES ((size_t)1 << 30)
#define SIGNAL_CHECK_BYTES ((size_t)256 << 20)
/* Runs of at least STAGE_MIN_PAGES pages at a stride (page size at most STAGE_BYTES / 16) are
 * gathered into a buffer of STAGE_BYTES and written from there. */
#define STAGE_BYTES ((size_t)8 << 20)
#define STAGE_MIN_PAGES 16

typedef struct {
    int fd;
    struct iovec iov[IOV_MAX];
    int niov;
    size_t bytes;   /* in iov */
    int64_t at;     /* file offset of iov[0] */
    int err;        /* errno of a failed write, 0 while fine */
    char *stage;    /* STAGE_BYTES, for runs of pages at a stride */
} Batch;

/* pwritev all of iov (consumed as it goes) at file offset at: 0, or -1 with the errno in *err. */
static int write_iov(int fd, struct iovec *iov, int n, int64_t at, int *err)
{
    while (n > 0) {
        ssize_t done = n == 1 ? pwrite(fd, iov->iov_base, iov->iov_len, (off_t)at) : pwritev(fd, iov, n, (off_t)at);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            return -1;
        }
        if (done == 0) {
            *err = EIO;
            return -1;
        }
        at += done;
        while (n > 0 && (size_t)done >= iov->iov_len) {
            done -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= (size_t)done;
        }
    }
    return 0;
}

static int batch_flush(Batch *b)
{
    if (write_iov(b->fd, b->iov, b->niov, b->at, &b->err) < 0)
        return -1;
    b->niov = 0;
    b->bytes = 0;
    return 0;
}

/* Pages at a stride, bound for adjacent file offsets: copied into the staging buffer, one write
 * (writes straight from a mapped file, page by page, measure slower than this copy). */
static int stage_write(Batch *b, const char *p, int64_t stride, int64_t pages, int64_t ps, int64_t at)
{
    for (int64_t k = 0; k < pages; k++)
        memcpy(b->stage + k * ps, p + k * stride, (size_t)ps);
    struct iovec one = {b->stage, (size_t)(pages * ps)};
    return write_iov(b->fd, &one, 1, at, &b->err);
}

/* Queue len bytes from p for file offset at (len <= WRITE_BATCH_BYTES). */
static int batch_add(Batch *b, const char *p, size_t len, int64_t at)
{
    if (b->niov > 0) {
        struct iovec *last = &b->iov[b->niov - 1];
        int follows = at == b->at + (int64_t)b->bytes && b->bytes + len <= WRITE_BATCH_BYTES;
        if (follows && (const char *)last->iov_base + last->iov_len == p) {
            last->iov_len += len;
            b->bytes += len;
            return 0;
        }
        if (!follows || b->niov == IOV_MAX) {
            if (batch_flush(b) < 0)
                return -1;
        }
    }
    if (b->niov == 0)
        b->at = at;
    b->iov[b->niov].iov_base = (void *)p;
    b->iov[b->niov].iov_len = len;
    b->niov++;
    b->bytes += len;
    return 0;
}

static PyObject *write_pages(PyObject *self, PyObject *args)
{
    Py_buffer buf, db, sb, tb, cb;
    int fd;
    long long page_size;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*iy*y*y*y*L", &buf, &fd, &db, &sb, &tb, &cb, &page_size))
        return NULL;
    PyObject *result = NULL;
    Batch *b = NULL;
    Py_ssize_t n = db.len / 8;
    if (db.len % 8 || sb.len != db.len || tb.len != db.len || cb.len != db.len) {
        PyErr_SetString(PyExc_ValueError, "write_pages: columns are not int64 columns of one length");
        goto done;
    }
    if (page_size <= 0 || (uint64_t)page_size > MAX_PAGE_SIZE) {
        PyErr_SetString(PyExc_ValueError, "write_pages: page size out of range");
        goto done;
    }
    const int64_t *dst = (const int64_t *)db.buf, *src = (const int64_t *)sb.buf;
    const int64_t *stride = (const int64_t *)tb.buf, *count = (const int64_t *)cb.buf;
    const int64_t ps = (int64_t)page_size, blen = (int64_t)buf.len;
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t d, s, t, c, last, span, end;
        memcpy(&d, dst + i, 8);
        memcpy(&s, src + i, 8);
        memcpy(&t, stride + i, 8);
        memcpy(&c, count + i, 8);
        if (c == 0)
            continue;
        if (c < 0 || s < 0 || t < 0 || d < 0 || __builtin_mul_overflow(c - 1, t, &last) ||
            __builtin_add_overflow(s, last, &last) || __builtin_add_overflow(last, ps, &last) || last > blen) {
            PyErr_Format(PyExc_ValueError, "write_pages: interval %zd reads outside its source buffer", i);
            goto done;
        }
        if (__builtin_mul_overflow(c, ps, &span) || __builtin_add_overflow(d, span, &end) ||
            __builtin_add_overflow(total, span, &total)) {
            PyErr_Format(PyExc_ValueError, "write_pages: interval %zd ends past the largest file offset", i);
            goto done;
        }
    }
    b = PyMem_Malloc(sizeof(Batch));
    if (b == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    b->fd = fd;
    b->niov = 0;
    b->bytes = 0;
    b->at = 0;
    b->err = 0;
    b->stage = NULL;
    if ((size_t)ps <= STAGE_BYTES / STAGE_MIN_PAGES) {
        for (Py_ssize_t j = 0; j < n && b->stage == NULL; j++) {
            int64_t t, c;
            memcpy(&t, stride + j, 8);
            memcpy(&c, count + j, 8);
            if (t != ps && c >= STAGE_MIN_PAGES) {
                b->stage = PyMem_Malloc(STAGE_BYTES);
                if (b->stage == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
            }
        }
    }
    const char *base = (const char *)buf.buf;
    Py_ssize_t i = 0;
    int64_t k = 0; /* pages of interval i queued so far */
    while (i < n && !b->err) {
        /* The GIL is taken back every SIGNAL_CHECK_BYTES to see to signals (Ctrl-C). */
        size_t budget = SIGNAL_CHECK_BYTES;
        Py_BEGIN_ALLOW_THREADS
        while (i < n && budget > 0) {
            int64_t d, s, t, c;
            memcpy(&d, dst + i, 8);
            memcpy(&s, src + i, 8);
            memcpy(&t, stride + i, 8);
            memcpy(&c, count + i, 8);
            if (k >= c) {
                i++;
                k = 0;
                continue;
            }
            int64_t pages = 1;
            int staged = 0;
            if (t == ps) { /* contiguous in the source: one piece, within a batch */
                int64_t cap = (int64_t)WRITE_BATCH_BYTES / ps;
                pages = c - k < cap ? c - k : cap;
            } else if (b->stage != NULL && c - k >= STAGE_MIN_PAGES) {
                int64_t cap = (int64_t)STAGE_BYTES / ps;
                pages = c - k < cap ? c - k : cap;
                staged = 1;
            }
            size_t len = (size_t)(pages * ps);
            if (staged ? stage_write(b, base + s + k * t, t, pages, ps, d + k * ps) < 0
                       : batch_add(b, base + s + k * t, len, d + k * ps) < 0)
                break;
            k += pages;
            budget = len >= budget ? 0 : budget - len;
        }
        if (!b->err && i >= n && b->niov > 0)
            batch_flush(b);
        Py_END_ALLOW_THREADS
        if (!b->err && i < n && PyErr_CheckSignals() < 0)
            goto done;
    }
    if (b->err) {
        errno = b->err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyLong_FromLongLong(total);
done:
    if (b != NULL)
        PyMem_Free(b->stage);
    PyMem_Free(b);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&db);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&tb);
    PyBuffer_Release(&cb);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(buf, pos, end, page_size, sizes, by_name, current_block) -> "
     "(pos, current_block, columns, pages, zero, zero_nonzero_fill, xbzrle, compressed)\n\n"
     "Consume RAM page records from pos; stop before the first one it does not take."},
    {"page_totals", page_totals, METH_VARARGS,
     "page_totals(block, kind, count, nblocks) -> [(block, kind, pages), ...] in first-seen order, or None"},
    {"write_pages", write_pages, METH_VARARGS,
     "write_pages(buf, fd, dst, src, stride, count, page_size) -> bytes written\n\n"
     "pwritev the pages of DATA intervals of one source buffer to fd (columns: int64)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "Compiled scanner of RAM page records and writer of page intervals.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    return PyModule_Create(&module);
}
