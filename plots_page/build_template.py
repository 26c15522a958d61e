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
    ("vega", "5.33.1", "build/vega.min.js",
     "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js",
     "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js",
     "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da"),
]  # fmt: skip
MARKER = "<!-- inlined scripts -->"
# dvc_render fills these placeholders anywhere in the template, so the scripts must not contain them.
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")


def fetch(package: str, version: str, cache: Path) -> Path:
    """The package's npm tarball, downloaded once into `cache` by `npm pack`."""
    tarball = cache / f"{package}-{version}.tgz"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{package}@{version}"
    command = ["npm", "pack", "--silent", "--ignore-scripts", spec, "--pack-destination", str(cache)]
    try:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    except FileNotFoundError:
        sys.exit("error: npm not found; install Node.js and npm (apt-get install npm) to build the page")
    except subprocess.CalledProcessError as error:
        sys.exit(f"error: npm pack {spec} failed (exit {error.returncode}); can npm reach its registry?")
    return tarball


def read_script(tarball: Path, member: str, sha256: str) -> str:
    with tarfile.open(tarball) as archive:
        data = archive.extractfile(f"package/{member}").read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        sys.exit(f"error: {tarball}: {member} has sha256 {digest}, expected {sha256}; delete it and retry")
    script = data.decode("utf-8")
    for forbidden in ("</script", *PLACEHOLDERS):
        if forbidden in script:
            sys.exit(f"error: {tarball}: {member} contains '{forbidden}' and cannot be inlined")
    return script


def build(out: Path, cache: Path = HERE / "build" / "npm") -> None:
    template = (HERE / "template.html").read_text(encoding="utf-8")
    tags = []
    for package, version, member, sha256 in SCRIPTS:
        script = read_script(fetch(package, version, cache), member, sha256)
        tags.append(f"<!-- {package}@{version} -->\n<script>{script}</script>")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # make never sees a half-written template
    partial.write_text(template.replace(MARKER, "\n".join(tags)), encoding="utf-8")
    partial.replace(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "build" / "template.html")
