"""Cut the test slice of The Complete Journey sample: whole households, chosen by a hash of their id.

    python tests/data/completejourney/cut.py /work/shared/data/completejourney tests/data/completejourney

Households are taken in order of blake2b(household_id) (a fixed, data-independent shuffle), each
with all of its transaction lines, while the two files together stay within --max-bytes.
products.csv keeps only the products those lines name. Lines are copied byte for byte, in their
original order, so the slice is in the published format, not a re-serialization of it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections import defaultdict
from pathlib import Path


def household_order(household_id: str) -> str:
    return hashlib.blake2b(household_id.encode(), digest_size=8).hexdigest()


def cut(source: Path, dest: Path, max_bytes: int) -> tuple[int, int, int]:
    """Writes dest/transactions_sample.csv and dest/products.csv: (households, lines, products)."""
    tx_header, *tx_lines = (source / "transactions_sample.csv").read_text().splitlines(keepends=True)
    pr_header, *pr_lines = (source / "products.csv").read_text().splitlines(keepends=True)
    # neither file quotes a field or breaks one over lines, so each line parses on its own
    lines_of: dict[str, list[int]] = defaultdict(list)  # household_id -> indexes into tx_lines
    products_of: dict[str, set[str]] = defaultdict(set)
    for n, line in enumerate(tx_lines):
        household, _, _, product = next(csv.reader([line]))[:4]
        lines_of[household].append(n)
        products_of[household].add(product)
    product_line = {next(csv.reader([line]))[0]: line for line in pr_lines}

    size = len(tx_header) + len(pr_header)
    chosen: list[str] = []
    products: set[str] = set()
    for household in sorted(lines_of, key=household_order):
        new = products_of[household] - products
        extra = (sum(len(tx_lines[n]) for n in lines_of[household])
                 + sum(len(product_line.get(p, "")) for p in new))
        if size + extra > max_bytes:
            break
        chosen.append(household)
        products |= new
        size += extra

    keep = sorted(n for h in chosen for n in lines_of[h])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "transactions_sample.csv").write_text(tx_header + "".join(tx_lines[n] for n in keep))
    kept_products = [line for line in pr_lines if next(csv.reader([line]))[0] in products]
    (dest / "products.csv").write_text(pr_header + "".join(kept_products))
    return len(chosen), len(keep), len(kept_products)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with transactions_sample.csv and products.csv")
    parser.add_argument("dest", type=Path, help="folder to write the slice to")
    parser.add_argument("--max-bytes", type=int, default=290_000, help="both files together at most this size")
    args = parser.parse_args()
    households, lines, products = cut(args.source, args.dest, args.max_bytes)
    print(f"{households} households, {lines} transaction lines, {products} products -> {args.dest}")


if __name__ == "__main__":
    main()
