"""``python -m optical_ops.training.corpora fetch|build``: get the corpora, write the benchmarks.

``fetch`` downloads the named corpora (all by default) into the cache; ``build`` reads them from
it, writes the train/test bitext and the CLIR collections to ``--out`` (default
``<cache>/clir``) and prints the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import load_corpora
from .cache import CORPORA, CORPORA_ENV, CorpusNotFoundError, FetchError, corpora_dir, fetch
from .clir import build_benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optical_ops.training.corpora", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("fetch", "download the corpora into the cache"),
        ("build", "write the train/test bitext and CLIR collections"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--corpus", nargs="+", choices=CORPORA, default=list(CORPORA), metavar="NAME",
            help=f"of {', '.join(CORPORA)} [all]",
        )  # fmt: skip
        command.add_argument(
            "--cache", type=Path,
            help=f"[${CORPORA_ENV}, else $OPTICAL_CACHE/corpora, else ~/.cache/optical-ot/corpora]",
        )  # fmt: skip
        if name == "build":
            command.add_argument("--out", type=Path, help="[<cache>/clir]")
    args = parser.parse_args(argv)

    if args.command == "fetch":
        try:
            for fetched in fetch(args.corpus, args.cache):
                print(f"{fetched.corpus}: {', '.join(path.name for path in fetched.downloads)}")
        except FetchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"in {corpora_dir(args.cache)}")
        return 0
    out = args.out or corpora_dir(args.cache) / "clir"
    try:
        corpora = load_corpora(args.corpus, args.cache)
    except CorpusNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = build_benchmarks(corpora, out)
    print(json.dumps(counts, indent=2, ensure_ascii=False))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
