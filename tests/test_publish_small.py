"""scripts/publish_small.sh runs every cell a registered claim compares on the published datasets.

The 6bcc7de publication left `iwae-bound-tightens-image` untested because the script had no
`vae[iw_samples=64]` run on digits; a claim registered later (the spline flow's) had no run
either. This reads the script's `run` lines and `gmbench floor` call, and checks them against
every claim's cells, so a claim cannot again go untested by omission.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from gmbench.plugins import Registries

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "publish_small.sh"
# the script's dataset variables and each dataset's modality (what `modality:*` claims match)
DATASETS = {"$TOY": ("8gaussians", "toy2d"), "$TEXT": ("synthlang", "text"), "$IMAGE": ("digits", "image")}


def _label(label: str) -> tuple[str, frozenset]:
    """``dc-ae[f=8, residual=False]`` -> ``("dc-ae", {"f=8", "residual=false"})``."""
    m = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", label)
    return m.group(1), frozenset(x.strip().lower() for x in (m.group(2) or "").split(",") if x.strip())


def scripted_runs(text: str) -> set[tuple[str, frozenset, str]]:
    """(plugin, its --set values as a label's extras, dataset) for every run the script makes."""
    runs = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        for var, (name, _) in DATASETS.items():
            line = line.replace(var, name)
        if not line.startswith(("run --plugins", "gmbench floor")):
            continue
        words = shlex.split(line)
        if words[:2] == ["run", "--plugins"]:
            sets = frozenset(w.split(".", 1)[1].lower() for prev, w in zip(words, words[1:]) if prev == "--set")
            for plugin in words[2].split(","):
                for dataset in words[words.index("--datasets") + 1].split(","):
                    runs.add((plugin, sets, dataset))
        elif words[:3] == ["gmbench", "floor", "--datasets"]:
            runs |= {("floor", frozenset({"reference"}), d) for d in words[3].split(",")}
    return runs


def missing_cells(runs, claims) -> list[str]:
    missing = []
    for claim in claims:
        for name, modality in DATASETS.values():
            if not claim.matches(name, modality):
                continue
            for cell in (claim.a, claim.b):
                if cell is not None and (*_label(cell.method), name) not in runs:
                    missing.append(f"{claim.name} on {name}: {cell.method}")
    return missing


def test_every_registered_claim_has_its_cells_in_the_publication_script():
    reg = Registries()
    claims = [reg.claims.get(n) for n in reg.claims.names()]
    runs = scripted_runs(SCRIPT.read_text())
    assert {d for _, _, d in runs} == {name for name, _ in DATASETS.values()}  # the parser found the script's runs
    assert len(claims) > 50
    assert missing_cells(runs, claims) == []


def test_the_check_finds_a_cell_the_script_does_not_run():
    """The parser reads --set into a label's extras, and a claim on a run the script lacks is reported."""
    runs = scripted_runs(SCRIPT.read_text())
    assert ("vae", frozenset({"iw_samples=64"}), "digits") in runs
    without = scripted_runs(SCRIPT.read_text().replace("--datasets $IMAGE --set vae.iw_samples=64", "--datasets $IMAGE"))
    reg = Registries()
    assert missing_cells(without, [reg.claims.get("iwae-bound-tightens-image")]) == [
        "iwae-bound-tightens-image on digits: vae[iw_samples=64]"]
