"""Copy a few regenerated PNGs, downscaled, into docs/figures/ for the README gallery.

Usage (after ``kvstab reproduce --quick``):
    python paper_figures/_gallery.py [--src paper_figures/out] [--dst docs/figures]

Each copy is at most 1000 px wide and kept under 120 KB (palette-quantised if needed).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

GALLERY = [
    "fig2_queue_one_gpu",
    "fig4_queue_eight_gpus",
    "fig6_waiting_cdf",
    "fig3_trace_lengths",
    "fig8_trimming",
    "fig9_stability_map",
    "fig10_routers",
]
# docs/figures/fig11_policies.png is drawn from the full-size run of experiments/policies.py
# (the quick size is a smoke run whose numbers mean little), so the gallery leaves it alone.
MAX_WIDTH = 1000
MAX_BYTES = 120_000


def shrink(src: Path, dst: Path) -> int:
    img = Image.open(src).convert("RGB")
    if img.width > MAX_WIDTH:
        img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
    for colors in (None, 256, 128, 64):
        out = img if colors is None else img.quantize(colors=colors)
        buf = io.BytesIO()
        out.save(buf, format="PNG", optimize=True)
        if buf.tell() <= MAX_BYTES:
            break
    dst.write_bytes(buf.getvalue())
    return buf.tell()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="paper_figures/out")
    p.add_argument("--dst", default="docs/figures")
    args = p.parse_args()
    dst = Path(args.dst)
    dst.mkdir(parents=True, exist_ok=True)
    for stem in GALLERY:
        n = shrink(Path(args.src) / f"{stem}.png", dst / f"{stem}.png")
        print(f"{dst / stem}.png  {n / 1000:.0f} KB")


if __name__ == "__main__":
    main()
