"""Mark IR layers to run in their own (f32) precision under a bf16 inference hint.

OpenVINO's runtime attribute ``ov::DisableFP16Compression`` (serialised in the IR as
``<attribute name="precise" version="0"/>``) is documented as marking "operation as prohibited to convert
to lower precision (e.g. to FP16) and they should be inferred precisely in the original precision"; the
CPU plugin keeps a node so marked in f32 when it enforces bf16. Python cannot create that attribute on a
node (a string value under its key is rejected at compile time), so it is written into the saved
``model.xml``: a plain text edit, so the same input gives the same bytes. The exporter then reads the
compiled model's runtime precisions back to prove the marked ops run f32.
"""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import quoteattr

ATTRIBUTE = '<attribute name="precise" version="0" />'
PRECISE = f"<rt_info>\n\t\t\t\t{ATTRIBUTE}\n\t\t\t</rt_info>\n\t\t\t"
LAYER = re.compile(r'(<layer [^>]*\bname=("[^"]*")[^>]*>)(.*?)(</layer>)', re.S)


def mark_precise(xml_path: Path, names: list[str]) -> int:
    """Add the ``precise`` attribute to every layer of ``xml_path`` named in ``names``; returns how many."""
    wanted = {quoteattr(n) for n in names}
    marked = 0

    def mark(m: re.Match) -> str:
        nonlocal marked
        head, name, body, tail = m.groups()
        if name not in wanted or 'name="precise"' in body or "<input>" not in body:
            return m.group(0)
        marked += 1
        if "<rt_info>" in body:  # the layer has runtime info already: add ours to it
            return head + body.replace("<rt_info>", "<rt_info>\n\t\t\t\t" + ATTRIBUTE, 1) + tail
        return head + body.replace("<input>", PRECISE + "<input>", 1) + tail

    path = Path(xml_path)
    path.write_text(LAYER.sub(mark, path.read_text()))
    return marked
