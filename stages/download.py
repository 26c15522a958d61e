"""Stage 1: fetch the dataset archive named by download.url into one file, checksum verified.

download.url may be an http(s) or file:// URL, or a local path to an archive or to an image-folder
directory (packed into one uncompressed tar, so DVC tracks a single file). The output appears only once
complete and verified: a failed or interrupted download leaves nothing behind (classifier/data/fetch.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.core.errors import run
from classifier.core.params import load_params
from classifier.data.fetch import Network, fetch, file_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the single file to write, e.g. data/raw/dataset.archive")
    args = parser.parse_args()
    download = load_params().download

    fetch(download.url, args.output, download.checksum, Network.from_params(download))
    print(f"download: {download.url} -> {args.output} ({args.output.stat().st_size:,} bytes)")
    if download.checksum is None:
        digest = file_digest(args.output, "sha256")
        print(f"download: not verified; to pin this exact file set download.checksum: sha256:{digest}")


if __name__ == "__main__":
    run(main)
