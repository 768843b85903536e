"""`tether data list | mirror | verify`: the named sets and where each is read from (a data directory or its pinned Hub
copy), a mirror of them for offline use, and a check of a data directory against recorded sha256 hashes
(`tether.data.mirror`)."""

from __future__ import annotations

import argparse

from tether.errors import ArgumentParser

EXAMPLES = """examples:
  tether data mirror --out ~/tether-data advbench harmbench xstest alpaca gsm8k-test
  tether data verify --data_dir ~/tether-data"""
DATA_DIR = "data directory (default $TETHER_DATA_DIR, else ../shared/data)"


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tether data", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True, parser_class=ArgumentParser)
    listing = verbs.add_parser("list", help="every named set: its local file and size, its Hub copy (repo@revision)")
    listing.add_argument("--data_dir", default=None, help=DATA_DIR)
    mirror = verbs.add_parser("mirror", help="write named sets into a data directory, with a manifest of sha256s")
    mirror.add_argument("--out", required=True, help="the mirror: absent, empty, or a previous mirror (kept, extended)")
    mirror.add_argument("names", nargs="*", help="named sets (default: every set with a local file or a Hub copy)")
    mirror.add_argument("--data_dir", default=None, help=f"local copies to read first: {DATA_DIR}")
    verify = verbs.add_parser("verify", help="check a data directory's files against their recorded sha256")
    verify.add_argument("--data_dir", required=True, help="a mirror (its manifest) or the canonical data directory")
    return p


def main(argv: list[str]) -> int:
    from tether.data.mirror import describe_sets, mirror_sets, verify_dir

    args = make_parser().parse_args(argv)
    if args.verb == "list":
        for s in describe_sets(args.data_dir):
            local = f"{s['path']} ({s['bytes']:,} bytes)" if s["path"] else "-"
            print(f"{s['name']:24} {s['role']:10} local: {local}")
            print(f"{'':35} hub:   {s['hub'] or '- (a data directory only)'}")
            if s["differs"]:
                print(f"{'':35} the Hub copy differs: {s['differs']}")
    elif args.verb == "mirror":
        for entry in mirror_sets(args.out, args.names, args.data_dir):
            origin = f"{entry['repo']}@{entry['revision']}" if entry["source"] == "hub" else entry["directory"]
            print(f"wrote {entry['path']} ({', '.join(entry['sets'])}) from {origin}")
    else:
        origin, files = verify_dir(args.data_dir)
        print(f"{len(files)} files in {args.data_dir} match the sha256 recorded in {origin}")
    return 0
