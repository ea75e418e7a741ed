"""Per-file limits on parsing, and the cheap checks that apply them before a parser sees a file.

The checks read as little as they can (the zip directory, an image header, one linear scan of
markup) and fail in milliseconds with the limit's setting in the reason, so the same file fails
the same way on every run. What no header can tell (a parser that hangs or balloons) is bounded
by the supervised worker (`mmrag.parsing.worker`): a wall-clock limit and a memory ceiling.
Every limit is 0 = off. None of them is part of the config fingerprint.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mmrag.parsing.errors import ParseError

MEDIA_KINDS = ("audio", "video")
ZIP_KINDS = ("docx", "pptx", "xlsx")
MARKUP_KINDS = ("html", "markdown")
# A zip member is only judged by its compression ratio when it expands to more than this.
ZIP_RATIO_FLOOR = 16 * 2**20


class LimitExceeded(ParseError):
    """A per-file limit stopped the file. Its kind is `content` (the file is redone when its bytes
    or the config change, or with `--retry-failed`): a file that outgrew a limit once would outgrow
    it again, at the limit's full cost each time. `transient` only for a worker that never started."""

    def __init__(self, reason: str, setting: str, transient: bool = False):
        super().__init__(reason, transient)
        self.setting = setting

    def __reduce__(self):
        return (type(self), (str(self), self.setting, self.transient))


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3600.0
    memory_mb: int = 8192
    max_file_mb: int = 1024
    max_pages: int = 10_000
    max_image_pixels: int = 200_000_000
    max_nesting: int = 256
    max_unzipped_mb: int = 1024
    max_zip_ratio: int = 100

    @classmethod
    def from_settings(cls, s) -> "Limits":
        return cls(s.parse_timeout_s, s.parse_memory_mb, s.max_file_mb, s.max_pages, s.max_image_pixels,
                   s.max_nesting, s.max_unzipped_mb, s.max_zip_ratio)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def precheck(path: Path, kind: str, limits: Limits) -> None:
    """Checks that need no parser. Raises LimitExceeded; a file these cannot read (not a zip, not
    an image) passes, and its parser reports what is wrong with it."""
    size = os.stat(path).st_size
    if limits.max_file_mb and kind not in MEDIA_KINDS and size > limits.max_file_mb * 2**20:
        raise LimitExceeded(f"file too large: {_mb(size)} (limit {limits.max_file_mb} MB, MMRAG_MAX_FILE_MB)",
                            "MMRAG_MAX_FILE_MB")
    if kind in ZIP_KINDS:
        check_zip(path, limits)
    elif kind in MARKUP_KINDS and limits.max_nesting:
        depth = markup_depth(path.read_bytes(), markdown=(kind == "markdown"), stop_at=limits.max_nesting)
        if depth > limits.max_nesting:
            raise LimitExceeded(f"markup nested more than {limits.max_nesting} levels deep (MMRAG_MAX_NESTING)",
                                "MMRAG_MAX_NESTING")
    elif kind == "image" and limits.max_image_pixels:
        size_px = image_size(path)
        if size_px and size_px[0] * size_px[1] > limits.max_image_pixels:
            w, h = size_px
            raise LimitExceeded(f"image too large: {w} x {h} = {w * h:,} pixels (limit {limits.max_image_pixels:,}, "
                                "MMRAG_MAX_IMAGE_PIXELS)", "MMRAG_MAX_IMAGE_PIXELS")


def check_pdf_pages(path: Path, limits: Limits) -> None:
    """The page count from pypdfium2 (the document's page tree, no page is loaded). Runs in the
    parse worker, under its limits: opening a hostile PDF is already pdfium's work."""
    if not limits.max_pages:
        return
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except Exception:
        return  # encrypted, truncated, not a PDF: the parser says which
    try:
        n = len(pdf)
    finally:
        pdf.close()
    if n > limits.max_pages:
        raise LimitExceeded(f"PDF has {n:,} pages (limit {limits.max_pages:,}, MMRAG_MAX_PAGES)", "MMRAG_MAX_PAGES")


def check_zip(path: Path, limits: Limits) -> None:
    """Decompression bombs among Office files, from the zip's central directory alone."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # an encrypted (OLE) or broken package: the parser reports it
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if limits.max_unzipped_mb and total > limits.max_unzipped_mb * 2**20:
        raise LimitExceeded(f"decompression bomb: {_mb(total)} uncompressed from {_mb(packed)} "
                            f"(limit {limits.max_unzipped_mb} MB, MMRAG_MAX_UNZIPPED_MB)", "MMRAG_MAX_UNZIPPED_MB")
    if limits.max_zip_ratio:
        for i in infos:
            ratio = i.file_size / max(i.compress_size, 1)
            if i.file_size > ZIP_RATIO_FLOOR and ratio > limits.max_zip_ratio:
                raise LimitExceeded(f"decompression bomb: {i.filename} expands {ratio:,.0f}x to {_mb(i.file_size)} "
                                    f"(limit {limits.max_zip_ratio}x, MMRAG_MAX_ZIP_RATIO)", "MMRAG_MAX_ZIP_RATIO")


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, without PIL's own bomb check (which would raise in
    this process before our limit could say anything) and without decoding pixels."""
    from PIL import Image

    Image.init()
    with open(path, "rb") as fp:
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            fp.seek(0)
            try:
                return factory(fp, str(path)).size
            except Exception:  # not this format: try the next one, as Image.open does
                continue
    return None


# -- markup nesting ------------------------------------------------------------------------------

_VOID = frozenset(b"area base br col embed hr img input link meta param source track wbr keygen basefont frame "
                  b"isindex command".split())
# Elements whose end tag is optional: a new one closes the open one of the same name when only
# such elements are open above it (`<li>a<li>b`, `<tr><td>a<tr>` are siblings; `<li><ul><li>` and
# `<p><b>a<p>` nest). Docling reads HTML with html.parser, which nests all of them, but its cost on
# a long run of bare `<p>` stays moderate (5,000 in 15 s) while any other chain of a few hundred
# levels ends in a RecursionError after seconds to minutes (50,000 `<div>`: 260 s).
_SIBLINGS = frozenset(b"p li dt dd tr td th option optgroup thead tbody tfoot colgroup caption rb rt rtc rp".split())
_RAW = frozenset(b"script style textarea title xmp".split())
_TAG_START = re.compile(rb"<(!--|/?[A-Za-z])")
_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9:_-]*")
# HTML element names (tags in Markdown that are not among these, such as `List<String>`, are text).
_HTML_NAMES = frozenset(b"""a abbr address area article aside audio b base bdi bdo blockquote body br button canvas
caption center cite code col colgroup data datalist dd del details dfn dialog dir div dl dt em embed fieldset
figcaption figure font footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe img input ins
kbd label legend li link main map mark math menu meta meter nav noscript object ol optgroup option output p param
picture pre progress q rp rt ruby s samp script section select small source span strike strong style sub summary sup
svg table tbody td template textarea tfoot th thead time title tr track tt u ul var video wbr""".split())
_SCAN_BACK = 64  # how far below the top a sibling may be found (keeps the scan linear)


def _html_depth(data: bytes, limit: int, known_only: bool = False, start: int = 0) -> int:
    """The deepest element nesting, as an HTML parser would build the tree (void elements, `/>`,
    optional end tags, comments, script/style bodies accounted for). One pass; stops early once
    deeper than `limit`."""
    stack: list[bytes] = []
    open_count: dict[bytes, int] = {}
    deepest, pos = 0, start
    lower = None
    while True:
        m = _TAG_START.search(data, pos)
        if m is None:
            return deepest
        if m.group(1) == b"!--":
            end = data.find(b"-->", m.end())
            if end < 0:
                return deepest
            pos = end + 3
            continue
        # A tag runs to the next ">" (a ">" inside a quoted attribute ends it early: harmless here).
        # Every byte is passed once, so a file of unclosed "<a" stays linear.
        end = data.find(b">", m.end())
        if end < 0:
            return deepest
        closing = m.group(1).startswith(b"/")
        name = _NAME.match(data, m.start() + (2 if closing else 1)).group().lower()
        self_closing = data[end - 1:end] == b"/"
        pos = end + 1
        if known_only and name not in _HTML_NAMES:
            continue
        if closing:  # close up to the matching open element, if there is one
            if open_count.get(name):
                while True:
                    top = stack.pop()
                    open_count[top] -= 1
                    if top == name:
                        break
            continue
        if name in _VOID or self_closing:
            continue
        if name in _RAW:
            if lower is None:
                lower = data.lower()
            end = lower.find(b"</" + name, pos)
            if end < 0:
                return deepest
            pos = end
            continue
        if name in _SIBLINGS and open_count.get(name):
            for i in range(len(stack) - 1, max(len(stack) - 1 - _SCAN_BACK, -1), -1):
                if stack[i] == name:
                    for top in stack[i:]:
                        open_count[top] -= 1
                    del stack[i:]
                    break
                if stack[i] not in _SIBLINGS:
                    break  # another element is open inside it (`<p><b>x<p>`): Docling's parser nests these
        stack.append(name)
        open_count[name] = open_count.get(name, 0) + 1
        if len(stack) > deepest:
            deepest = len(stack)
            if deepest > limit:
                return deepest


_MD_PREFIX = re.compile(rb"[ \t>]*")
_FENCE = re.compile(rb"[ \t>]*(```|~~~)")


def markup_depth(data: bytes, markdown: bool = False, stop_at: int = 1 << 30) -> int:
    """HTML: element nesting. Markdown: block nesting (each `>` and each two columns of
    indentation is a level, outside code fences) and the nesting of HTML written into it."""
    if not markdown:
        return _html_depth(data, stop_at)
    deepest, fenced, html = 0, False, []
    for line in data.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        prefix = _MD_PREFIX.match(line).group()
        if len(prefix) < len(line):  # blank lines do not nest
            depth = prefix.count(b">") + len(prefix.replace(b">", b"").expandtabs(4)) // 2
            deepest = max(deepest, depth)
            if line[len(prefix):len(prefix) + 1] == b"<":
                html.append(line)
        if deepest > stop_at:
            return deepest
    if html:  # HTML blocks, read as one document (Docling hands them to its HTML parser)
        deepest = max(deepest, _html_depth(b"\n".join(html), stop_at, known_only=True))
    return deepest
