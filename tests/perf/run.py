"""`make bench`: run every benchmark against real embedded infrastructure and write the results."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from infrastructure.embedded import EmbeddedInfra, free_ports
from tests.perf import (
    bench_alert,
    bench_analytics,
    bench_analytics_core,
    bench_analytics_freshness,
    bench_auth,
    bench_console,
    bench_host,
    bench_mesh,
    bench_streaming,
    bench_telemetry,
)
from tests.perf.results import BenchResult, write_results

BENCHMARKS = [
    bench_host,
    bench_mesh,
    bench_auth,
    bench_console,
    bench_streaming,
    bench_telemetry,
    bench_alert,
    bench_analytics_core,
    bench_analytics,
    bench_analytics_freshness,
]


async def main(quick: bool, out_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="itsmesh-bench-") as data_dir:
        async with EmbeddedInfra(Path(data_dir), ports=free_ports()) as urls:
            results: list[BenchResult] = []
            for bench in BENCHMARKS:
                name = bench.__name__.rsplit(".", 1)[-1]
                print(f"running {name} …", flush=True)
                results.extend(await bench.run(quick, urls))
    json_path, md_path = write_results(results, out_dir)
    print(md_path.read_text())
    print(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run itsmesh benchmarks against raw baselines.")
    parser.add_argument("--quick", action="store_true", help="short runs (the whole suite in ≤ 3 minutes)")
    parser.add_argument("--out", type=Path, default=Path(".itsmesh/bench"), help="where results.json/.md go")
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.out))
