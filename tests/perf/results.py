"""One benchmark figure, compared with its baseline measured in the same run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class BenchResult:
    """`value` of the measured path and `baseline` of the raw path, in `unit`; ratio = value / baseline."""

    name: str
    value: float
    unit: str
    baseline: float
    baseline_name: str
    target: str

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def write_results(results: list[BenchResult], out_dir: Path) -> tuple[Path, Path]:
    """Write results.json ({name: {value, unit, baseline, ratio, target}}) and a markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        r.name: {**{k: v for k, v in asdict(r).items() if k != "name"}, "ratio": round(r.ratio, 3)}
        for r in results
    }
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(payload, indent=2))
    lines = [
        "| benchmark | value | baseline | ratio | target |",
        "|---|---|---|---|---|",
        *(
            f"| {r.name} | {r.value:,.1f} {r.unit} | {r.baseline:,.1f} {r.unit} ({r.baseline_name}) "
            f"| {r.ratio:.2f} | {r.target} |"
            for r in results
        ),
    ]
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
