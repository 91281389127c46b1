"""The documentation: every page mkdocs.yml names exists, the README stays a short front door whose links all
resolve, and `mkdocs build --strict` (as .ci/run runs it) builds the site and fails on a broken link."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of a Markdown link or image: [text](target)


def nav_pages(nav) -> list[str]:
    """Every page file named in an mkdocs nav, however deeply its sections nest."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [p for item in nav for p in nav_pages(item)]


def config() -> dict:
    """mkdocs.yml as data (plain YAML: no Python tags)."""
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def local_targets(markdown: str) -> list[str]:
    """The link targets of a Markdown text that name files (not web addresses, not anchors of the same page),
    without their #anchor."""
    targets = [t for t in LINK.findall(markdown) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    return [t.split("#")[0] for t in targets]


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav():
    pages = nav_pages(config()["nav"])
    assert len(pages) >= 17, pages
    missing = [p for p in pages if not (ROOT / "docs" / p).is_file()]
    assert missing == []
    unlisted = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in pages)
    assert unlisted == []


def test_readme_is_a_short_front_door_with_links_that_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 160
    targets = local_targets(readme)
    assert "docs/installation.md" in targets and "docs/reliability.md" in targets
    assert [t for t in targets if not (ROOT / t).is_file()] == []


def test_readme_keeps_the_two_setup_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert (
        "apt-get update && apt-get install -y chromium libxml2-utils default-jre-headless && "
        'pip install torch==2.13.0 && pip install -e ".[dev]" && pip install --no-deps modelscope==1.40.2 && '
        "biogpt extract --task bc5cdr --grounded --linked examples/pubmed_sample.xml -o -" in lines
    )
    assert "python -m pytest -q" in lines


def test_ci_installs_what_the_readme_installs():
    """.ci/run installs the README's system packages and pins, so a green CI means the two commands work."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "apt-get install -y -qq chromium libxml2-utils default-jre-headless" in ci
    for pin in ("torch==2.13.0", '-e ".[dev]"', "--no-deps modelscope==1.40.2", "python -m pytest -q"):
        assert pin in ci, pin


def test_docs_pages_link_only_to_files_that_exist():
    broken = [(page.name, t) for page in sorted((ROOT / "docs").glob("*.md"))
              for t in local_targets(page.read_text(encoding="utf-8")) if not (page.parent / t).is_file()]  # fmt: skip
    assert broken == []


def build(config_file: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of one config into `site`, as .ci/run runs it (not `-q`: quiet hides the warnings
    that strict mode counts, and the build passes)."""
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file), "-d", str(site)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1",
                          "PATH": "/usr/bin:/bin", "HOME": str(site.parent)})  # fmt: skip


def test_strict_build_makes_every_page_and_the_api_reference(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in (
        "biogpt.load",
        "biogpt.generate",
        "biogpt.Tokenizer",
        "biogpt.ByteLevelTokenizer",
        "biogpt.mining.extractor.Extractor",
        "biogpt.serve.app.create_app",
    ):
        assert f'id="{name}"' in api, name
    assert (tmp_path / "site" / "page.png").is_file()


def test_strict_build_fails_on_a_broken_link(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    cfg = {k: v for k, v in config().items() if k in ("site_name", "strict", "validation", "markdown_extensions")}
    cfg |= {"docs_dir": str(docs), "nav": ["index.md"]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(cfg))
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "missing.md" in done.stderr


def test_the_commands_page_lists_every_command():
    from biogpt.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")  # the subcommands' argparse action
    page = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    assert len(sub.choices) >= 15
    assert [c for c in sub.choices if f"| `biogpt {c}` |" not in page] == []
