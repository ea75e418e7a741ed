"""Write a small mixed-format demo corpus (Markdown, HTML, CSV, PDF, DOCX, PNG) into a folder."""

from __future__ import annotations

import sys
from pathlib import Path

DUCKS = """# Dabbling ducks

Dabbling ducks feed mainly at the surface of shallow water. Instead of diving, a dabbling duck
tips forward, tail up, to graze on plants and small invertebrates just below the surface.

## Mallard

The mallard is the most widespread dabbling duck. Males have a glossy green head; females are
mottled brown. Mallards take off almost vertically from the water.

## Teal

Teals are the smallest dabbling ducks. They fly fast in tight, twisting flocks.
"""

HTML = """<!doctype html><html><head><title>Diving ducks</title></head><body>
<h1>Diving ducks</h1>
<p>Diving ducks, such as the tufted duck and the common pochard, dive deep under water to find food.
Their legs sit far back on the body, which makes walking on land clumsy.</p>
<img src="https://example.invalid/pochard.jpg" alt="A common pochard on a lake">
<table><caption>Table 1: Typical dive depths</caption>
<tr><th>Species</th><th>Depth (m)</th></tr>
<tr><td>Tufted duck</td><td>3 to 5</td></tr>
<tr><td>Common pochard</td><td>1 to 2.5</td></tr>
<tr><td>Long-tailed duck</td><td>up to 60</td></tr>
</table></body></html>
"""

CSV = "species,wingspan_cm,weight_g\nMallard,81-98,750-1580\nEurasian teal,53-59,250-450\nTufted duck,65-72,700-1400\n"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "dabbling_ducks.md").write_text(DUCKS)
    (out / "diving_ducks.html").write_text(HTML)
    (out / "duck_sizes.csv").write_text(CSV)

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (640, 200), "white")
    ImageDraw.Draw(img).text((20, 80), "Migration map: ducks fly south in autumn", fill="black", font_size=28)
    img.save(out / "migration_note.png")

    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(out / "wetland_report.pdf"), pagesize=A4)
    c.setFont("Helvetica-Bold", 16)
    c.drawString(72, 780, "Wetland survey 2026")
    c.setFont("Helvetica", 11)
    c.drawString(72, 750, "Counts of wintering waterfowl rose by twelve percent on the northern lakes.")
    c.drawImage(str(out / "migration_note.png"), 72, 560, width=320, height=100)
    c.drawString(72, 540, "Figure 1: Notes from the survey team.")
    c.showPage()
    c.drawString(72, 780, "Page two: the reed beds host nesting mallards and teals from April to June.")
    c.save()

    import docx

    d = docx.Document()
    d.add_heading("Feeding guide", level=1)
    d.add_paragraph("Do not feed bread to ducks; offer peas, oats or corn instead.")
    t = d.add_table(rows=3, cols=2)
    for r, (food, ok) in enumerate([("Food", "Suitable"), ("Thawed peas", "yes"), ("White bread", "no")]):
        t.cell(r, 0).text, t.cell(r, 1).text = food, ok
    d.save(out / "feeding_guide.docx")
    print(f"demo corpus: {len(list(out.iterdir()))} files in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/corpus"))
