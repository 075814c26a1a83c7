"""Regenerate the shipped amazon-instruments data set: the Amazon Musical Instruments 5-core reviews (2014).

Usage (from the repository root)::

    python dataset/convert_amazon.py [--raw PATH] [--out DIR]

defaults: ``--raw ../shared/data/amazon-instruments/reviews_Musical_Instruments_5.json.gz`` and
``--out dataset/amazon-instruments``; writes only ``DIR/amazon-instruments.inter`` (the folder's ``README.md``
and ``SOURCE.md`` are written by hand; see them for provenance and counts).

The conversion is ``recbole_ckf/data/convert_amazon.py``'s, whose docstring states the file's rules (header,
one row per user-item pair, row order ``(timestamp, user_id, item_id)``, text normalisation, CSV quoting, empty
texts, texts pandas would read as missing are refused). This script loads that file directly: it needs only the
Python standard library, not the project's dependencies. For any other Amazon review file (2014 or 2018, with
item titles from a meta file) use ``python -m recbole_ckf.data.convert_amazon``.
"""

import argparse
import importlib
import os
import sys
import types

DATASET = "amazon-instruments"

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RAW = os.path.normpath(
    os.path.join(_REPO_ROOT, "..", "shared", "data", "amazon-instruments", "reviews_Musical_Instruments_5.json.gz")
)
DEFAULT_OUT = os.path.join(_REPO_ROOT, "dataset", DATASET)


def _load_converter():
    """``recbole_ckf/data/convert_amazon.py`` as a module, without importing the package (and so RecBole): its
    folder stands in as a bare package (no ``__init__`` run), so that its relative imports of ``amazon_reader``
    and ``amazon_writer`` find them."""
    name = "recbole_ckf.data.convert_amazon"
    if name in sys.modules:
        return sys.modules[name]
    package = "_recbole_ckf_data"
    if package not in sys.modules:
        bare = types.ModuleType(package)
        bare.__path__ = [os.path.join(_REPO_ROOT, "recbole_ckf", "data")]
        sys.modules[package] = bare
    return importlib.import_module(package + ".convert_amazon")


_converter = _load_converter()
HEADER = _converter.HEADER
ConvertError = _converter.ConvertError


def convert(raw_path=DEFAULT_RAW, out_dir=DEFAULT_OUT):
    """Convert ``raw_path`` into ``out_dir/amazon-instruments.inter`` (written atomically); return that path."""
    rows = _converter.read_reviews(raw_path).rows
    path = os.path.join(out_dir, DATASET + ".inter")
    _converter.write_files([(path, _converter.inter_lines(rows))])
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=DEFAULT_RAW, help="the gzipped JSON-lines reviews (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the folder to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = convert(args.raw, args.out)
    except ConvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
