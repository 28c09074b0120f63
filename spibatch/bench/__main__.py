"""``python -m spibatch.bench BENCH.yaml [--site A.yaml ...] [--out DIR] [--dry-run] [--schema]``: the bench
command without the CLI (the same function, :func:`spibatch.bench.bench_command`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spibatch.bench import bench_command, exit_status, print_schema
from spibatch.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spibatch.bench", description=__doc__)
    parser.add_argument("bench", type=Path, nargs="?", help="the bench YAML file")
    parser.add_argument("--site", type=Path, action="append", default=[], help="a site file (repeat for more)")
    parser.add_argument("--out", type=Path, default=None, help="the bench folder (default: bench-<name>/)")
    parser.add_argument("--dry-run", action="store_true", help="print what every point would submit; create nothing")
    parser.add_argument("--rates", type=Path, default=None, help="take the kernel rates from this bench.json "
                        "(of the same machine) instead of measuring them")
    parser.add_argument("--no-rates", action="store_true", help="no kernel rates, no model")
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema of bench.json and exit")
    args = parser.parse_args(argv)
    if args.schema:
        print_schema()
        return 0
    if args.bench is None:
        parser.error("the bench YAML file is required")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:   # Parsl's own INFO lines (its kernel-rate probe) stay in its log
        handler.addFilter(_not_parsl_info)
    try:
        if args.rates is not None and args.no_rates:
            raise InputError("given with --no-rates, which measures and uses no rates", path=args.rates,
                             field="--rates", fix="give one of --rates FILE and --no-rates")
        rates = False if args.no_rates else (args.rates or True)
        out, text = bench_command(args.bench, args.site, out=args.out, dry_run=args.dry_run, rates=rates)
    except InputError as exc:
        print(f"spibatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(text, end="")
    return 0 if args.dry_run else exit_status(out)


def _not_parsl_info(record: logging.LogRecord) -> bool:
    """Whether the console shows ``record``: Parsl's below WARNING, no (Parsl writes them to its own log)."""
    return not (record.name.split(".")[0] == "parsl" and record.levelno < logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
