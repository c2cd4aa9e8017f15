"""Write the tuning's winner into the beam selector's defaults (used by ``bench/device_check.sh``).

``experiments/default_mask.py --tune`` picks, on the tuning seeds, the beam setting (width, clean
weight, fit budget) with the best mean test gain among those whose budget held in every run. The
published run must measure the command a user gets, so the winner has to be the code's default
before it starts: this script rewrites the three literals in ``cloak/selectors.py`` (the setting
declarations and ``BeamSelector``'s signature), and says what it changed. A missing tuning file
or no winner changes nothing.

    python bench/apply_tuned_defaults.py docs/default_mask_tuning.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SELECTORS = Path(__file__).resolve().parents[1] / "src" / "deepcloak" / "cloak" / "selectors.py"

#: (pattern, replacement template): each pattern must match exactly once.
EDITS = (
    (r'Setting\("width", int, \d+, ', 'Setting("width", int, {width}, '),
    (r"(\n    \"beam\": \(\n[^\n]*\n        _clean_weight\()[\d.]+\)", r"\g<1>{clean_weight!r})"),
    (r"\n        width: int = \d+,", "\n        width: int = {width},"),
    (
        r"\n        clean_weight: float = [\d.]+,\n        rivals",
        "\n        clean_weight: float = {clean_weight!r},\n        rivals",
    ),
    (r"\nDEFAULT_FIT_BUDGET = [\d.]+", "\nDEFAULT_FIT_BUDGET = {fit_budget!r}"),
)


def apply(winner: dict[str, float], source: str) -> str:
    """``source`` with the beam defaults set to ``winner``'s width, clean weight, fit budget."""
    values = {
        "width": int(winner["width"]),
        "clean_weight": float(winner["clean_weight"]),
        "fit_budget": float(winner["fit_budget"]),
    }
    for pattern, template in EDITS:
        source, n = re.subn(pattern, template.format(**values), source)
        if n != 1:
            raise SystemExit(f"{SELECTORS}: {pattern!r} matched {n} times, expected once")
    return source


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else Path("docs/default_mask_tuning.json")
    if not path.exists():
        print(f"{path}: no tuning results; the defaults stay as they are")
        return
    summary = json.loads(path.read_text())["summary"]
    winner, planned = summary.get("winner"), summary["planned"]
    if winner is None or winner == planned:
        print(f"tuning winner {winner}, planned {planned}: the defaults stay as they are")
        return
    setting = summary["settings"][winner]
    SELECTORS.write_text(apply(setting, SELECTORS.read_text()))
    print(f"tuning winner {winner} (planned {planned}): written into {SELECTORS.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
