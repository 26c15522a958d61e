"""Build the offline plots-page template: template.html with vega, vega-lite and vega-embed inlined.

`dvc plots show` / `dvc plots diff` load these three scripts from a CDN, so their page is blank
without internet. Given `--html-template` with the scripts inlined (and no `{scripts}` placeholder,
where DVC would put its CDN tags), the page they write needs no network at all.

The scripts come from exact npm versions (`npm pack`, cached in build/npm/) and are checked against
the sha256 digests below before use. Usage: python plots_page/build_template.py OUT.html
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# package, exact version, script inside the npm tarball, sha256 of that script. Vega-Lite 5 is what
# DVC's plot templates are written for (their "$schema" is vega-lite/v5).
SCRIPTS = [
    ("vega", "5.33.1", "build/vega.min.js", "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js", "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js", "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da"),
]  # fmt: skip
MARKER = "<!-- inlined scripts -->"
# dvc_render fills these placeholders anywhere in the template, so the scripts must not contain them.
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")


def fetch(package: str, version: str, cache: Path) -> Path:
    tarball = cache / f"{package}-{version}.tgz"
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                ["npm", "pack", "--silent", "--ignore-scripts", f"{package}@{version}", "--pack-destination", str(cache)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        except FileNotFoundError:
            sys.exit("error: npm not found; install Node.js (e.g. apt-get install npm) to build the plots page")
        except subprocess.CalledProcessError as error:
            sys.exit(f"error: npm pack {package}@{version} failed (exit {error.returncode}); is the npm registry reachable?")
    return tarball


def read_script(tarball: Path, member: str, sha256: str) -> str:
    with tarfile.open(tarball) as archive:
        data = archive.extractfile(f"package/{member}").read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        sys.exit(f"error: {tarball}: {member} has sha256 {digest}, expected {sha256}; delete the file and retry")
    script = data.decode("utf-8")
    for forbidden in ("</script", *PLACEHOLDERS):
        if forbidden in script:
            sys.exit(f"error: {tarball}: {member} contains '{forbidden}' and cannot be inlined")
    return script


def build(out: Path, cache: Path = HERE / "build" / "npm") -> None:
    template = (HERE / "template.html").read_text(encoding="utf-8")
    tags = [
        f"<!-- {package}@{version} -->\n<script>{read_script(fetch(package, version, cache), member, sha256)}</script>"
        for package, version, member, sha256 in SCRIPTS
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # make never sees a half-written template
    partial.write_text(template.replace(MARKER, "\n".join(tags)), encoding="utf-8")
    partial.replace(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "build" / "template.html")
