"""Rebuild the subset CJK fonts under datasets/assets/fonts/ from the system Noto CJK fonts (a dev tool).

Needs Debian's ``fonts-noto-cjk`` (``apt-get install fonts-noto-cjk``) and fontTools (comes with
matplotlib). Each font is cut down to the characters in ``ad_texts.yaml`` plus ASCII, and renamed
(the SIL Open Font License asks modified fonts not to use the original's reserved names).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from fontTools import subset
from fontTools.ttLib import TTCollection

HERE = Path(__file__).resolve().parent
SYSTEM = Path("/usr/share/fonts/opentype/noto")
#: (collection file, family in it, output name)
FONTS = (
    ("NotoSansCJK-Bold.ttc", "Noto Sans CJK SC", "AdSans-Bold"),
    ("NotoSansCJK-Regular.ttc", "Noto Sans CJK SC", "AdSans-Regular"),
    ("NotoSerifCJK-Bold.ttc", "Noto Serif CJK SC", "AdSerif-Bold"),
)


def characters() -> str:
    """Every character the ad texts use, plus printable ASCII and a few CJK punctuation marks."""
    text = (HERE / "ad_texts.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    chars = set(yaml.safe_dump(doc, allow_unicode=True)) | set(map(chr, range(32, 127))) | set("：、，。！（）—·")
    return "".join(sorted(c for c in chars if c.isprintable()))


def main() -> int:
    chars = characters()
    out_dir = HERE / "fonts"
    out_dir.mkdir(exist_ok=True)
    for file, family, out_name in FONTS:
        collection = TTCollection(str(SYSTEM / file))
        index = next(i for i, f in enumerate(collection.fonts) if f["name"].getDebugName(1) == family)
        options = subset.Options()
        options.font_number = index
        options.name_IDs = ["*"]
        options.layout_features = ["*"]
        options.hinting = False
        font = subset.load_font(str(SYSTEM / file), options)
        sub = subset.Subsetter(options)
        sub.populate(text=chars)
        sub.subset(font)
        names = font["name"]
        for rec in list(names.names):
            if rec.nameID in (1, 3, 4, 6, 16, 17, 21, 22):
                names.removeNames(nameID=rec.nameID)
        style = out_name.split("-")[1]
        names.setName(out_name.split("-")[0], 1, 3, 1, 0x409)
        names.setName(style, 2, 3, 1, 0x409)
        names.setName(f"streetwatch {out_name}", 3, 3, 1, 0x409)
        names.setName(f"{out_name.split('-')[0]} {style}", 4, 3, 1, 0x409)
        names.setName(out_name, 6, 3, 1, 0x409)
        path = out_dir / f"{out_name}.otf"
        subset.save_font(font, str(path), options)
        print(f"{path}: {len(chars)} characters, {path.stat().st_size:,} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
