"""The browser half of e2e/ui/test: drives Debian's chromium through the UI.

Reads UI_URL, UI_RESULTS (screenshots, axe.json), UI_AXE (axe.min.js),
ALICE_PASSWORD and BOB_PASSWORD from the environment. Prints "ok - NAME" /
"not ok - NAME" per step and exits non-zero if any failed.
"""

import json
import os
import re
import sys
import traceback

from playwright.sync_api import expect, sync_playwright

URL = os.environ["UI_URL"]
RESULTS = os.environ["UI_RESULTS"]
with open(os.environ["UI_AXE"], encoding="utf-8") as f:
    AXE = f.read()

passed, failed = 0, 0
shots = 0
axe_report = []
csp_violations = []


def step(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok - {name}", flush=True)
    except Exception:  # noqa: BLE001 - report every failure and go on
        failed += 1
        print(f"not ok - {name}", flush=True)
        for line in traceback.format_exc().splitlines()[-12:]:
            print(f"#   {line}", flush=True)


def check_page(page, name):
    """Screenshot the page and run axe-core on it; serious or critical fail."""
    global shots
    shots += 1
    path = os.path.join(RESULTS, f"{shots:02d}-{name}.png")
    page.screenshot(path=path, full_page=True)
    # Evaluated through the DevTools protocol, so the page's CSP (no inline
    # script) stays on while axe runs.
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE + "\n;undefined")
    result = page.evaluate(
        "async () => await axe.run(document, {resultTypes: ['violations']})"
    )
    violations = [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result["violations"]
    ]
    axe_report.append({"page": name, "url": page.url, "screenshot": path, "violations": violations})
    bad = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe: {json.dumps(bad, indent=1)}"


def log_in(page, user, password):
    page.goto(f"{URL}/ui/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Logged in as")).to_be_visible()


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        # The CA is a throw-away one the browser does not know.
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1200, "height": 900}
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=URL)
        page = context.new_page()
        page.on(
            "console",
            lambda m: csp_violations.append(m.text)
            if "Content Security Policy" in m.text
            else None,
        )
        state = {}

        def login():
            page.goto(f"{URL}/ui/login")
            check_page(page, "login")
            log_in(page, "alice", os.environ["ALICE_PASSWORD"])
            cookies = {c["name"]: c for c in context.cookies()}
            s = cookies["berth_session"]
            assert s["httpOnly"] and s["secure"] and s["sameSite"] == "Strict", s

        def search():
            page.goto(f"{URL}/ui/")
            expect(page.get_by_role("link", name="team/other")).to_be_visible()
            page.get_by_label("Search repositories").press_sequentially("app")
            expect(page.get_by_role("link", name="team/other")).to_be_hidden()
            expect(page.get_by_role("link", name="team/app")).to_be_visible()
            check_page(page, "repositories-search")

        def repository():
            page.get_by_role("link", name="team/app").click()
            expect(page.get_by_role("heading", name="team/app")).to_be_visible()
            for tag in ("multi", "extra", "linux-amd64", "linux-arm64"):
                expect(page.get_by_role("link", name=tag, exact=True)).to_be_visible()
            expect(page.get_by_role("columnheader", name=re.compile("Last pulled"))).to_be_visible()
            pulled = page.locator('tr[data-name="multi"] td[data-label="Last pulled"]')
            expect(pulled).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$"))
            check_page(page, "repository")

        def index():
            page.get_by_role("link", name="multi", exact=True).click()
            expect(page.get_by_role("heading", name="Platforms")).to_be_visible()
            expect(page.get_by_role("link", name="linux/amd64")).to_be_visible()
            expect(page.get_by_role("link", name="linux/arm64")).to_be_visible()
            node = os.environ["UI_NODE_ENDPOINT"]
            pods = page.locator("section#pods")
            expect(pods.get_by_role("heading", name="Pods on this cluster")).to_be_visible()
            expect(pods).to_contain_text(f"image: {node}/team/app:multi")
            expect(pods).to_contain_text(f"image: {node}/team/app@sha256:")
            state["index"] = page.url
            check_page(page, "index")

        def platform():
            page.get_by_role("link", name="linux/arm64").click()
            expect(page.get_by_role("heading", name="Layers")).to_be_visible()
            rows = page.locator("h2#layers + table tbody tr")
            expect(rows).to_have_count(2)
            text = rows.first.inner_text()
            assert "application/vnd.oci.image.layer.v1.tar+gzip" in text, text
            assert re.search(r"\d+ B", text), text
            expect(page.get_by_text("COPY etc /etc")).to_be_visible()
            expect(page.get_by_text("GREETING=hi")).to_be_visible()
            check_page(page, "platform-image")

        def copy():
            page.get_by_role("button", name="Copy docker pull command").click()
            expect(page.get_by_role("button", name="Copy docker pull command")).to_have_text("Copied")
            copied = page.evaluate("() => navigator.clipboard.readText()")
            assert copied.startswith("docker pull 127.0.0.1:") and "/team/app@sha256:" in copied, copied

        def referrers():
            page.goto(state["index"])
            section = page.locator("h2#referrers + ul.tree")
            expect(section).to_contain_text("application/vnd.dev.cosign.simplesigning.v1+json")
            expect(section).to_contain_text("dev.berth.signer")
            section.scroll_into_view_if_needed()
            check_page(page, "referrers")

        def audit():
            page.goto(f"{URL}/ui/audit")
            expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
            expect(page.locator("table").first).to_contain_text("push")
            check_page(page, "audit")

        def delete():
            page.goto(f"{URL}/ui/r/team/app")
            page.get_by_role("link", name="Delete tag extra").click()
            expect(page.get_by_role("heading", name=re.compile("Delete tag extra"))).to_be_visible()
            expect(page.get_by_text("Only the tag goes")).to_be_visible()
            check_page(page, "delete-confirm")
            page.get_by_role("button", name="Delete", exact=True).click()
            expect(page.get_by_role("status")).to_contain_text("Deleted extra")
            expect(page.get_by_role("link", name="extra", exact=True)).to_have_count(0)
            expect(page.get_by_role("link", name="multi", exact=True)).to_be_visible()
            check_page(page, "after-delete")

        def no_delete():
            page.get_by_role("button", name="Log out").click()
            log_in(page, "bob", os.environ["BOB_PASSWORD"])
            page.goto(f"{URL}/ui/r/team/app")
            expect(page.get_by_role("link", name="multi", exact=True)).to_be_visible()
            expect(page.get_by_text("Delete")).to_have_count(0)
            page.get_by_role("link", name="multi", exact=True).click()
            expect(page.get_by_role("heading", name="Platforms")).to_be_visible()
            expect(page.get_by_text("Delete")).to_have_count(0)
            check_page(page, "no-delete-for-bob")
            r = page.goto(f"{URL}/ui/r/team/app/-/delete?tag=multi")
            assert r is not None and r.status == 403, r and r.status

        def mobile():
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{URL}/ui/r/team/app")
            check_page(page, "phone-repository")

        for name, fn in [
            ("login", login),
            ("search", search),
            ("repository", repository),
            ("index", index),
            ("platform", platform),
            ("copy", copy),
            ("referrers", referrers),
            ("audit", audit),
            ("delete", delete),
            ("no-delete", no_delete),
            ("phone", mobile),
        ]:
            step(name, fn)

        def no_csp_violations():
            assert not csp_violations, csp_violations

        step("csp", no_csp_violations)
        browser.close()

    with open(os.path.join(RESULTS, "axe.json"), "w", encoding="utf-8") as f:
        json.dump(axe_report, f, indent=1)
    counts = {}
    for page in axe_report:
        for v in page["violations"]:
            counts[v["impact"]] = counts.get(v["impact"], 0) + 1
    print(f"# axe-core on {len(axe_report)} pages: violations by impact {counts or 'none'}")
    print(f"# screenshots: {RESULTS}/*.png")
    print(f"ui: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
