"""The bad corpus: the inputs that must not break ingestion (see tests/corpus/README.md).

Five of them are real files kept in tests/corpus/bad/; the rest are made here, byte for byte the same
every time: most are cut from, or renamed copies of, files in tests/corpus/sample/.
"""

from __future__ import annotations

import random
import shutil
import struct
import wave
import zipfile
import zlib
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
SAMPLE = CORPUS / "sample"
KEPT_BAD = CORPUS / "bad"


def _silence(path: Path, seconds: float = 1.0, rate: int = 44100) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))


def _head(src: Path, dest: Path, n: int) -> None:
    with open(src, "rb") as f:
        dest.write_bytes(f.read(n))


def build_bad(dest: Path) -> Path:
    """Write the whole bad corpus into `dest` (a fresh folder) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(KEPT_BAD.iterdir()):
        shutil.copy(f, dest / f.name)
    (dest / "empty.pdf").write_bytes(b"")
    (dest / "random_bytes.pdf").write_bytes(random.Random(0).randbytes(50_000))
    _head(SAMPLE / "multi_page.pdf", dest / "truncated.pdf", 20_000)
    _head(SAMPLE / "sample_10s_video.mp4", dest / "truncated_video.mp4", 100_000)
    shutil.copy(SAMPLE / "example_image_01.png", dest / "looks_like_text.txt")  # a PNG named .txt
    # A UTF-16 BOM, NULs and a broken UTF-8 sequence (\xc3 then "(").
    (dest / "invalid_utf8.md").write_bytes(b"\xff\xfe\x00bad utf16\x00\x00 \xc3( invalid")
    _silence(dest / "silent_1s.wav")
    return dest


# -- pathological inputs (per-file limits) --------------------------------------------------------


def make_pdf(path: Path, pages: int, lines: int = 40) -> Path:
    """A real PDF with `pages` pages of Helvetica text (objects and xref written by hand)."""
    objs: list[bytes | None] = [b"<< /Type /Catalog /Pages 2 0 R >>", None,
                                b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for p in range(pages):
        body = b"BT /F1 11 Tf 50 780 Td 14 TL " + b"".join(
            b"(Page %d line %d: the quick brown fox jumps over the lazy dog.) '" % (p + 1, i) for i in range(lines)) + b" ET"
        objs.append(b"<< /Length %d >>\nstream\n" % len(body) + body + b"\nendstream")
        objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                    b"/Contents %d 0 R >>" % len(objs))
        kids.append(len(objs))
    objs[1] = b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % pages
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def make_png(path: Path, width: int, height: int, pixels: bool = True) -> Path:
    """A white greyscale PNG. `pixels=False`: only the header claims the size (a stub of data)."""
    if pixels:
        z = zlib.compressobj(9)
        row = b"\x00" + b"\xff" * width
        data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    else:
        data = zlib.compress(b"\x00" * 64)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))
    return path


def make_zip_bomb_docx(path: Path, mb: int = 200) -> Path:
    """A DOCX whose document.xml inflates ~1000x to `mb` MB of spaces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"/>')
        with z.open("word/document.xml", "w", force_zip64=True) as f:
            f.write(b'<?xml version="1.0"?><w:document xmlns:w="x"><w:body>')
            chunk = b" " * 2**20
            for _ in range(mb):
                f.write(chunk)
            f.write(b"</w:body></w:document>")
    return path


def deep_html(n: int = 50_000) -> str:
    return "<html><body>" + "<div>" * n + "deep" + "</div>" * n + "</body></html>"


def build_pathological(dest: Path) -> Path:
    """Inputs that once kept a parser busy for minutes or would balloon it, each caught by a limit
    (README, Per-file limits), plus a Markdown file with NUL bytes (indexed, the NULs removed):
    50,000-deep HTML, a DOCX that inflates to 200 MB, a 50-page PDF (over MMRAG_MAX_PAGES=20 in the
    tests), a PNG whose header claims 100,000 x 100,000 pixels."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "deep.html").write_text(deep_html())
    make_zip_bomb_docx(dest / "bomb.docx")
    make_pdf(dest / "pages.pdf", 50)
    make_png(dest / "huge.png", 100_000, 100_000, pixels=False)
    (dest / "nul.md").write_bytes(b"# Mallards\n\nMallards dab\x00ble at the sur\x00\x00face of shallow water.\n")
    return dest
