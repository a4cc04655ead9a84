"""One look at a page the way the issue asks for every page: axe-core's
accessibility rules in the light and the dark theme, and screenshots in
light, dark and on a phone (390x844), where the page must not be wider than
the screen.

axe-core comes from the npm registry (ui-tests/package.json, installed into
.cache/axe by scripts/setup-host). It is evaluated through Playwright, which
the pages' Content-Security-Policy does not apply to.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AXE_JS = ROOT / ".cache" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}
FAILING_IMPACTS = ("serious", "critical")

# The hub's own markup, which this project does not write: its hidden error
# dialog (page.html's modal macro) and, on the hub's pages (home, spawn), what
# the hub renders around the plugin's parts.
HUB_MARKUP = ["#error-dialog"]


def axe_violations(page, exclude: list[str] | None = None, include: list[str] | None = None):
    """Serious and critical axe-core violations on the page, as readable lines."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_JS.read_text() + "\n;undefined")
    context = {"exclude": [[s] for s in HUB_MARKUP + (exclude or [])]}
    if include:
        context["include"] = [[s] for s in include]
    result = page.evaluate(
        # preload: false: axe would copy the stylesheets into inline <style>
        # elements, which the pages' CSP refuses (console errors)
        "async (context) => { const r = await axe.run(context,"
        " {resultTypes: ['violations'], preload: false});"
        " return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ') + ' :: ' + n.failureSummary)}))}",
        context,
    )
    return [
        f"{v['impact']} {v['id']}: {v['help']}\n    " + "\n    ".join(v["nodes"][:5])
        for v in result
        if v["impact"] in FAILING_IMPACTS
    ]


def set_theme(page, theme: str):
    # what the hub's darkmode.js sets; not stored, so other pages stay light
    page.evaluate(f"document.documentElement.setAttribute('data-bs-theme', {json.dumps(theme)})")
    # Bootstrap's colour transitions (off with reduced motion) must not be
    # measured half-way
    page.wait_for_timeout(50)


class PageCheck:
    def __init__(self, screenshot):
        self.screenshot = screenshot
        self.problems: list[str] = []
        self.pages: list[str] = []

    def __call__(self, page, name: str, exclude=None, include=None, phone: bool = True):
        """Check and photograph ``page`` (light, dark, phone); collects problems
        (checked by ``assert_clean``) so that one page does not hide the next."""
        if not AXE_JS.exists():
            raise AssertionError(f"{AXE_JS} missing: run scripts/setup-host")
        self.pages.append(name)
        original = page.viewport_size
        page.emulate_media(reduced_motion="reduce")
        theme = page.evaluate("document.documentElement.getAttribute('data-bs-theme') || 'light'")
        try:
            for variant in ("light", "dark"):
                set_theme(page, variant)
                for line in axe_violations(page, exclude, include):
                    self.problems.append(f"{name} ({variant}): {line}")
                self.screenshot(page, name if variant == "light" else f"{name}-dark")
            set_theme(page, "light")
            if phone:
                page.set_viewport_size(PHONE)
                page.wait_for_timeout(100)  # layout after the media queries switch
                width = page.evaluate("document.documentElement.scrollWidth")
                if width > PHONE["width"]:
                    self.problems.append(f"{name} (phone): page is {width} px wide")
                toggler = page.locator("nav .navbar-toggler")
                if toggler.count() and not toggler.first.is_visible():
                    self.problems.append(f"{name} (phone): no navbar menu button")
                self.screenshot(page, f"{name}-phone")
        finally:
            page.set_viewport_size(original)
            set_theme(page, theme)

    def assert_clean(self):
        problems, self.problems = self.problems, []
        assert problems == [], "\n".join(problems)
