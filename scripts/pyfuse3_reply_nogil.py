"""Patch an unpacked pyfuse3 source tree so that a read's reply is written to /dev/fuse
with the GIL released (scripts/setup builds pyfuse3 from source anyway).

Stock pyfuse3 holds the GIL while `fuse_reply_buf` copies a read's bytes into the
kernel; on a fast sequential read that is about half the time the GIL is held in the
mount, during which no data-plane thread can run. Only replies of 64 KiB and more let
it go: taking the GIL back may wait for another thread's switch interval, which a
small reply (a small file, a random 4 KiB read) would pay for in latency without
gaining anything. The buffer stays pinned by its Py_buffer for the call. Exits 1 with
one line when the source does not look as expected (setup then keeps the stock build).

    python scripts/pyfuse3_reply_nogil.py SRC_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

STOCK = """async def fuse_read_async (_Container c):
    cdef int ret
    cdef Py_buffer pybuf

    try:
        buf = await operations.read(c.fh, c.off, c.size)
    except FUSEError as e:
        ret = fuse_reply_err(c.req, e.errno)
    else:
        PyObject_GetBuffer(buf, &pybuf, PyBUF_CONTIG_RO)
        ret = fuse_reply_buf(c.req, <const_char*> pybuf.buf, <size_t> pybuf.len)
        PyBuffer_Release(&pybuf)
"""

_REPLY = """        ret = fuse_reply_buf(c.req, <const_char*> pybuf.buf, <size_t> pybuf.len)
"""
PATCHED = STOCK.replace(
    "    cdef Py_buffer pybuf\n",
    "    cdef Py_buffer pybuf\n    cdef fuse_req_t req = c.req\n",
).replace(
    _REPLY,
    """        if pybuf.len >= 65536:
            with nogil:
                ret = fuse_reply_buf(req, <const_char*> pybuf.buf, <size_t> pybuf.len)
        else:
            ret = fuse_reply_buf(req, <const_char*> pybuf.buf, <size_t> pybuf.len)
""",
)


def main() -> int:
    src = Path(sys.argv[1]) / "src" / "pyfuse3"
    handlers = src / "handlers.pxi"
    try:
        text = handlers.read_text()
    except OSError as e:
        print(f"pyfuse3 patch: {handlers}: {e.strerror}", file=sys.stderr)
        return 1
    if text.count(STOCK) != 1:
        print("pyfuse3 patch: fuse_read_async is not the one this patch knows", file=sys.stderr)
        return 1
    handlers.write_text(text.replace(STOCK, PATCHED))
    # The shipped C file was generated from the stock source: build from the .pyx.
    (src / "__init__.c").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
