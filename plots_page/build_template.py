"""Build the offline plots-page template: template.html with vega, vega-lite and vega-embed inlined.

`dvc plots show` / `dvc plots diff` load these three scripts from a CDN, so their page is blank
without internet. Given a template with the scripts inlined (and no `{scripts}` placeholder, where DVC
would put its CDN tags), the page they write needs no network at all. `.dvc/config` names the built
template (`plots.html_template`), so plain `dvc plots show` uses it.

The built template is committed (offline-template.html, 0.8 MB), so that the page works in any clone,
with nothing to build first: a clone installed with only `pip install -r requirements.lock` or after
`git clean -fdx` has it. Rebuild it after changing template.html or vendor/; `--check` (run by the tests)
fails when it is not the build of what is committed beside it.

The scripts are vendored in vendor/ (see vendor/README.md) and checked against vendor/SHA256SUMS
before use: no npm and no network. Standard library only.
Usage: python plots_page/build_template.py [OUT.html | --check]   (default: plots_page/offline-template.html)
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
DEFAULT_OUT = HERE / "offline-template.html"
MARKER = "<!-- inlined scripts -->"
# dvc_render fills these placeholders anywhere in the template, so the scripts must not contain them.
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")
# vendor/SHA256SUMS: `sha256sum` lines, "<hex digest>  <package>-<version>.min.js", in loading order.
SUM_LINE = re.compile(
    r"(?P<sha256>[0-9a-f]{64}) [ *](?P<name>(?P<package>[a-z-]+)-(?P<version>\d+\.\d+\.\d+)\.min\.js)"
)


def scripts(vendor: Path = VENDOR) -> list[tuple[str, str, Path, str]]:
    """(package, version, file, sha256) of each vendored script, in the order the page must load them."""
    found = []
    for number, line in enumerate((vendor / "SHA256SUMS").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = SUM_LINE.fullmatch(line.strip())
        if not match:
            expected = "'<sha256>  <package>-<version>.min.js'"
            sys.exit(f"error: {vendor}/SHA256SUMS:{number}: not {expected}: {line!r}")
        found.append((match["package"], match["version"], vendor / match["name"], match["sha256"]))
    return found


def read_script(path: Path, sha256: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        sys.exit(f"error: {path}: missing; it is vendored in git (see {VENDOR / 'README.md'})")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        sys.exit(f"error: {path} has sha256 {digest}, expected {sha256} (SHA256SUMS); restore it from git")
    script = data.decode("utf-8")
    for forbidden in ("</script", *PLACEHOLDERS):
        if forbidden in script:
            sys.exit(f"error: {path} contains '{forbidden}' and cannot be inlined")
    return script


def render(vendor: Path = VENDOR) -> str:
    """template.html with each vendored script, checked, inlined in its place."""
    template = (HERE / "template.html").read_text(encoding="utf-8")
    tags = []
    for package, version, path, sha256 in scripts(vendor):
        tags.append(f"<!-- {package}@{version} -->\n<script>{read_script(path, sha256)}</script>")
    return template.replace(MARKER, "\n".join(tags))


def build(out: Path = DEFAULT_OUT, vendor: Path = VENDOR) -> None:
    page = render(vendor)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # DVC and make never see a half-written template
    partial.write_text(page, encoding="utf-8", newline="\n")
    partial.replace(out)


def check(built: Path = DEFAULT_OUT, vendor: Path = VENDOR) -> None:
    """Exit with one line unless `built` is, byte for byte, what build() would write now."""
    fix = "rebuild it: python3 plots_page/build_template.py"
    if not built.is_file():
        sys.exit(f"error: {built} is missing; {fix}")
    if built.read_text(encoding="utf-8") != render(vendor):
        sys.exit(f"error: {built} is not the build of template.html and vendor/; {fix}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        check()
    else:
        build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
